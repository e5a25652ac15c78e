"""Tenant configurations for requests: parsed once (defaults overlaid, rules validated) and reused
until the tenant's configuration changes."""

from __future__ import annotations

import threading

from lodestar.cdp import CdpStore
from lodestar.tenant_config import TenantConfig, effective_config


class TenantConfigs:
    """The effective configuration per tenant, invalidated by the tenant record's ``updated_at``.

    Every call reads the tenant's record (one keyed read, which any serving process sees at once
    after a change); only a changed record is merged with the defaults and its rules parsed again.
    """

    def __init__(self, cdp: CdpStore) -> None:
        self._cdp = cdp
        self._cache: dict[str, tuple[float | None, TenantConfig]] = {}
        self._lock = threading.Lock()
        self.parsed = 0  # how many configurations were parsed (tests and metrics)

    def get(self, tenant: str) -> TenantConfig:
        record = self._cdp.get_tenant(tenant)
        stamp = record["updated_at"] if record else None
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = effective_config(record["config"] if record else None)
        config.parsed_rules  # noqa: B018 - validate and parse the rules once, here, not per request
        with self._lock:
            self._cache[tenant] = (stamp, config)
            self.parsed += 1
        return config
