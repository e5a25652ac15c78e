"""Per-tenant quotas and per-key rate limits (lodestar.tenant_config.QuotaSettings), so that one
tenant's flood does not become every tenant's latency.

Request rates are counted with the ``limits`` library (the one behind Flask-Limiter and SlowAPI),
as moving windows: at most the rate's requests in any second, exactly (a fixed or sliding-counter
window lets a burst through around a window's edge), in the storage ``LODESTAR_RATE_LIMIT_STORAGE``
names: ``memory://``
(the default) counts in each serving process, so with ``lodestar serve --workers N`` each worker
admits 1/N of a rate (requests spread over the workers' shared socket); a ``redis://`` URI counts
once for every worker and replica (``limits`` storage URIs; install ``limits[redis]``).

A refused request is refused before any work, by the guard that resolved its key (serving.auth):
429 with ``Retry-After`` and which quota it hit. For up to a second after (at most until that window
frees), the same credential's next requests are refused earlier still, before routing, the key
lookup and the body (serving.limits asks :meth:`RequestRates.refused`): a flood past its quota then
costs the server little more than reading the request heads. A refusal for the concurrency quota is
remembered the same way while the tenant stays at its limit (until one of its requests finishes). Events per day are checked by the events route
against the CDP's count of the tenant's events stored since UTC midnight, by the API or an import
(refreshed every few seconds, plus what this process stored or is storing since), so a batch past
the quota is refused whole.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from lodestar.cdp import CdpStore
from lodestar.errors import InvalidInput, QuotaExceeded
from lodestar.keys import Principal
from lodestar.tenant_config import QuotaSettings

DAY = 86400.0
COUNT_REFRESH_S = 5.0  # how old the CDP's count of today's events may be
MAX_REMEMBERED = 10_000  # refused credentials remembered at once (expired ones are dropped first)
EARLY_REFUSAL_S = 1.0  # how long a refusal answers for the guard before the guard looks again

THROTTLED = Counter("lodestar_requests_throttled_total",
                    "Requests refused with 429 by a quota: tenant_rate, key_rate, tenant_concurrency or events_per_day",
                    ["quota"])
SLOT = "lodestar.tenant_slot"  # the ASGI scope key of a request holding a tenant's concurrency slot


def _item(per_second: float) -> RateLimitItemPerSecond:
    """A rate as ``limits`` counts it, whole requests per whole seconds: exactly when a short window
    holds a whole number of requests (2.5/s: 5 per 2 s; 0.5/s: 1 per 2 s), else rounded down (never
    more than the quota)."""
    for seconds in (1, 2, 4, 5, 10, 20, 60):
        amount = per_second * seconds
        if amount >= 1 and abs(amount - round(amount)) < 1e-9:
            return RateLimitItemPerSecond(round(amount), seconds)
    seconds = max(1, math.ceil(1 / per_second))
    return RateLimitItemPerSecond(max(1, math.floor(per_second * seconds)), seconds)


class RequestRates:
    """The request-rate and concurrency quotas of every tenant and key. The guard checks them on the
    event loop's thread or from worker threads (serving.loop) and requests give their slots back
    on the loop: one lock makes each check-and-count, and each give-back, whole."""

    def __init__(self, storage_uri: str = "memory://", workers: int = 1) -> None:
        try:
            storage = storage_from_string(storage_uri)
        except Exception as exc:  # noqa: BLE001 - limits raises its own errors for bad URIs and missing drivers
            raise InvalidInput(f"LODESTAR_RATE_LIMIT_STORAGE={storage_uri!r} cannot be used: {exc}",
                               field="LODESTAR_RATE_LIMIT_STORAGE") from None
        self._limiter = MovingWindowRateLimiter(storage)
        self.workers = workers
        self.shared = not storage_uri.startswith("memory://")
        # Credentials refused for a rate, until the window that refused them frees: the
        # Authorization header (the same secret, so the same key) -> (until, message, quota).
        # A concurrency refusal also holds the tenant and its allowed requests in flight.
        self._refused: dict[str, tuple[float, str, str, str | None, int]] = {}
        self._logged: set[str] = set()  # credentials of _refused whose early refusal was logged
        self._in_flight: dict[str, int] = {}  # per tenant with a concurrency quota
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestRates:
        env = os.environ if environ is None else environ
        workers = env.get("LODESTAR_WORKERS", "1")
        return cls(env.get("LODESTAR_RATE_LIMIT_STORAGE", "").strip() or "memory://",
                   int(workers) if workers.isdigit() and int(workers) > 0 else 1)

    def refused(self, authorization: str) -> tuple[QuotaExceeded, bool] | None:
        """The refusal still in force for this Authorization header (set by :meth:`admit`), if any,
        and whether it is the first one answered early since that refusal (the one worth a log
        line: a flood's other refusals are counted, not logged)."""
        if authorization not in self._refused:  # the common case, without the lock (a dict lookup is atomic)
            return None
        with self._lock:
            entry = self._refused.get(authorization)
            if entry is None:
                return None
            until, message, quota, tenant, allowed = entry
            now = time.time()
            # A concurrency refusal stands while the tenant is still at its limit; a rate refusal
            # until its window frees.
            if now >= until or (tenant is not None and self._in_flight.get(tenant, 0) < allowed):
                self._refused.pop(authorization, None)
                self._logged.discard(authorization)
                return None
            first = authorization not in self._logged
            if first:
                self._logged.add(authorization)
        THROTTLED.labels(quota).inc()
        return QuotaExceeded(message, max(1, math.ceil(until - now)), quota), first

    def admit(self, principal: Principal, quotas: QuotaSettings, authorization: str | None = None) -> str | None:
        """Count a request of ``principal`` or raise :class:`QuotaExceeded` (nothing counted); a
        refusal for a rate is remembered for ``authorization`` until its window frees
        (:meth:`refused`). Returns the tenant when the request holds one of its concurrency slots,
        to be given back with :meth:`finished` when the request is done."""
        with self._lock:
            return self._admit(principal, quotas, authorization)

    def _admit(self, principal: Principal, quotas: QuotaSettings, authorization: str | None) -> str | None:
        share = 1 if self.shared else self.workers
        limits = [(name, item, ids) for name, rate, ids in (
            ("tenant_rate", quotas.requests_per_second, ("tenant", principal.tenant)),
            ("key_rate", quotas.key_requests_per_second, ("key", principal.key_id)),
        ) if rate > 0 for item in [_item(rate / share)]]
        for name, item, ids in limits:
            if not self._limiter.test(item, *ids):
                reset = self._limiter.get_window_stats(item, *ids).reset_time
                THROTTLED.labels(name).inc()
                whose = (f"tenant {principal.tenant!r}" if name == "tenant_rate"
                         else f"API key {principal.key_id!r} of tenant {principal.tenant!r}")
                setting = "requests_per_second" if name == "tenant_rate" else "key_requests_per_second"
                rate = quotas.requests_per_second if name == "tenant_rate" else quotas.key_requests_per_second
                message = (f"{whose} is over its quota of {rate:g} requests per second (quotas.{setting}); "
                           "slow down and retry after the Retry-After seconds, or ask the operator to raise it")
                if authorization is not None:
                    # At most EARLY_REFUSAL_S ahead: a quota the operator raised meanwhile is
                    # looked at again by the guard within that time.
                    self._remember(authorization, (min(reset, time.time() + EARLY_REFUSAL_S), message, name, None, 0))
                raise QuotaExceeded(message, max(1, math.ceil(reset - time.time())), name)
        if quotas.concurrent_requests > 0:
            allowed = quotas.concurrent_requests if self.shared else max(1, quotas.concurrent_requests // self.workers)
            if self._in_flight.get(principal.tenant, 0) >= allowed:
                THROTTLED.labels("tenant_concurrency").inc()
                message = (f"tenant {principal.tenant!r} already has {allowed} requests in flight, its quota "
                           f"(quotas.concurrent_requests = {quotas.concurrent_requests}); send fewer at once and retry")
                if authorization is not None:
                    # Refused early too while the tenant stays at its limit (and for at most
                    # EARLY_REFUSAL_S): the next request of a client sending too many at once is
                    # answered before routing and the key lookup, as a rate refusal's is.
                    self._remember(authorization, (time.time() + EARLY_REFUSAL_S, message, "tenant_concurrency",
                                                   principal.tenant, allowed))
                raise QuotaExceeded(message, 1, "tenant_concurrency")
        for _name, item, ids in limits:
            self._limiter.hit(item, *ids)
        if quotas.concurrent_requests > 0:
            self._in_flight[principal.tenant] = self._in_flight.get(principal.tenant, 0) + 1
            return principal.tenant
        return None

    def _remember(self, authorization: str, entry: tuple[float, str, str, str | None, int]) -> None:
        """Keep a refusal for :meth:`refused` (under the lock), forgetting expired ones when full."""
        now = time.time()
        if len(self._refused) >= MAX_REMEMBERED:
            self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
            self._logged &= self._refused.keys()
        if len(self._refused) < MAX_REMEMBERED:
            self._refused[authorization] = entry
            self._logged.discard(authorization)  # a new refusal: its first early one is logged

    def finished(self, tenant: str) -> None:
        """A request counted by :meth:`admit` against a concurrency quota is done."""
        with self._lock:
            left = self._in_flight.get(tenant, 0) - 1
            if left > 0:
                self._in_flight[tenant] = left
            else:
                self._in_flight.pop(tenant, None)


@dataclass
class _Today:
    day: int
    counted: int  # the CDP's count of the day's events when it was read
    read_at: float
    stored: int = 0  # stored by this process since it was read
    holding: int = 0  # held by batches of this process being written now


class EventQuotas:
    """The events-per-day quota: the CDP's count of a tenant's events accepted since UTC midnight
    (read at most every ``COUNT_REFRESH_S``) plus what this process accepted since."""

    def __init__(self, cdp: CdpStore, clock=time.time) -> None:
        self._cdp = cdp
        self._clock = clock
        self._today: dict[str, _Today] = {}
        self._lock = threading.Lock()

    def reserve(self, tenant: str, quotas: QuotaSettings, batch: int) -> int:
        """Hold ``batch`` of the tenant's events for today, or raise :class:`QuotaExceeded`. Returns
        what was held (0 without a quota), to be settled with :meth:`settle` once the batch is
        stored (or not): concurrent batches cannot pass the quota together."""
        limit = quotas.events_per_day
        if limit <= 0:
            return 0
        now = self._clock()
        day = int(now // DAY)
        with self._lock:
            today = self._today.get(tenant)
        if today is None or today.day != day or now - today.read_at >= COUNT_REFRESH_S:
            counted = self._cdp.count_events_since(tenant, day * DAY)  # outside the lock: a CDP read
            with self._lock:
                held = self._today.get(tenant)
                # Batches being written are not in the count yet: they stay held. (One stored just
                # before the count is counted twice until the next read: refused early, never late.)
                self._today[tenant] = _Today(day, counted, now, 0, held.holding if held and held.day == day else 0)
        with self._lock:
            today = self._today[tenant]
            used = today.counted + today.stored + today.holding
            if used + batch <= limit:
                today.holding += batch
                return batch
        THROTTLED.labels("events_per_day").inc()
        raise QuotaExceeded(
            f"tenant {tenant!r} has {used} of its {limit} events for today (UTC; quotas.events_per_day) and this "
            f"batch of {batch} would pass it: nothing of the batch was stored; send it after UTC midnight, "
            "or ask the operator to raise the quota", max(1, math.ceil((day + 1) * DAY - now)), "events_per_day")

    def settle(self, tenant: str, held: int, stored: int) -> None:
        """A held batch is done: ``stored`` of its ``held`` events were new (0 when writing failed)."""
        if held:
            with self._lock:
                today = self._today.get(tenant)
                if today is not None:
                    today.holding = max(0, today.holding - held)
                    today.stored += stored
