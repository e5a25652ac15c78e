"""Running experiments for requests: which variant a request's unit sees, and that variant's
configuration, at the cost of a dictionary lookup when a tenant runs no experiment.

Each tenant's running experiments are read from the CDP at most once per ``refresh_s`` (a new or
stopped experiment reaches every serving process within that); a variant's configuration (the
tenant's, with the variant's overlay) is built once per change of either."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lodestar.cdp import CdpStore
from lodestar.experiments.assignment import assign
from lodestar.experiments.definition import RUNNING, Running, variant_config
from lodestar.tenant_config import TenantConfig

MAX_VARIANT_CONFIGS = 4096

Assigned = list[list[str]]  # [[experiment, variant], ...], as responses and the served log carry them


class TenantExperiments:
    def __init__(self, cdp: CdpStore, refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._cdp = cdp
        self._refresh = refresh_s
        self._clock = clock
        self._running: dict[str, tuple[float, tuple[Running, ...]]] = {}
        self._configs: dict[tuple, tuple[TenantConfig, TenantConfig]] = {}
        self._reads: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def running(self, tenant: str) -> tuple[Running, ...]:
        now = self._clock()
        cached = self._running.get(tenant)
        if cached is not None and now - cached[0] < self._refresh:
            return cached[1]
        with self._reading(tenant):  # one read per tenant at a time; the others use its answer
            cached = self._running.get(tenant)
            if cached is not None and self._clock() - cached[0] < self._refresh:
                return cached[1]
            found = tuple(sorted((Running.of(r) for r in self._cdp.list_experiments(tenant)
                                  if r.get("status") == RUNNING), key=lambda e: (e.layer, e.name)))
            with self._lock:
                self._running[tenant] = (now, found)
            return found

    def _reading(self, tenant: str) -> threading.Lock:
        with self._lock:
            return self._reads.setdefault(tenant, threading.Lock())

    def apply(self, tenant: str, placement: str, unit: str | None, config: TenantConfig) -> tuple[TenantConfig, Assigned]:
        """The configuration the request is served with and the experiments it is in: one per layer,
        for a request with a unit (a user id or a session id)."""
        if unit is None:
            return config, []
        experiments = self.running(tenant)
        if not experiments:
            return config, []
        now, chosen, layers = time.time(), [], set()
        segments: set[str] | None = None
        for experiment in experiments:
            if experiment.layer in layers or not experiment.live(placement, now):
                continue
            if experiment.audience is not None:  # only users of a segment take part
                if segments is None:
                    segments = set(self._cdp.user_segments(tenant, unit[5:])) if unit.startswith("user:") else set()
                if experiment.audience not in segments:
                    continue
            index = assign(experiment.name, unit, experiment.weights, experiment.traffic)
            if index is not None:
                chosen.append((experiment, index))
                layers.add(experiment.layer)
        if not chosen:
            return config, []
        assigned = [[e.name, e.variants[i]] for e, i in chosen]
        overlays = [e.overlays[i] for e, i in chosen if e.overlays[i]]
        if not overlays:
            return config, assigned
        key = (tenant, *((e.name, e.version, i) for e, i in chosen))
        cached = self._configs.get(key)
        if cached is not None and cached[0] is config:
            return cached[1], assigned
        variant = variant_config(config, overlays)
        with self._lock:
            if len(self._configs) >= MAX_VARIANT_CONFIGS:
                self._configs.clear()
            self._configs[key] = (config, variant)
        return variant, assigned
