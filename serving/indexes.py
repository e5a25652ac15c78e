"""Published index versions per tenant, hot-swapped when a new version is published.

:meth:`TenantIndexes.get` is the only way a request reaches an index, and it takes the tenant
that the API key resolved to: a tenant's requests can only ever see that tenant's shard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from lodestar.errors import IndexNotReady
from lodestar.index import IndexReader, IndexStore, PublishedVersion

log = logging.getLogger("lodestar.serving")

# A retired reader stays open this long so that requests already using it can finish.
RETIRE_AFTER_S = 30.0


@dataclass
class _Slot:
    published: PublishedVersion | None
    checked_at: float


class TenantIndexes:
    def __init__(self, index_store: IndexStore, check_interval_s: float = 0.5) -> None:
        self._store = index_store
        self._interval = check_interval_s
        self._slots: dict[str, _Slot] = {}
        self._retired: list[tuple[float, IndexReader]] = []
        self._lock = threading.Lock()  # guards _slots and _retired (held briefly, never during I/O)
        # One lock per tenant serializes its refreshes: opening one tenant's new version (reading a
        # model over the network, say) never holds up another tenant's requests.
        self._tenant_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def get(self, tenant: str) -> PublishedVersion:
        """The tenant's published version, reloaded when the pointer moved (checked at most every
        ``check_interval_s``). A version is only ever opened after it was published, so a
        half-built one is never served; index and model change together (the index port opens
        them as one)."""
        now = time.monotonic()
        slot = self._slots.get(tenant)
        if slot is None or now - slot.checked_at >= self._interval:
            slot = self._refresh(tenant, now)
        if slot.published is None:
            raise IndexNotReady(
                f"tenant {tenant!r} has no published index yet; run `lodestar materialize --tenant {tenant}`"
            )
        return slot.published

    def _refresh(self, tenant: str, now: float) -> _Slot:
        with self._lock:
            tenant_lock = self._tenant_locks[tenant]
        with tenant_lock:
            slot = self._slots.get(tenant)
            if slot is not None and now - slot.checked_at < self._interval:
                return slot  # another thread refreshed it meanwhile
            current = slot.published if slot else None
            try:
                version = self._store.published(tenant)  # cheap: the pointer only
                fresh = (self._store.open_published(tenant)
                         if version is not None and (current is None or current.version != version) else None)
            except Exception:  # noqa: BLE001 - a version that cannot be opened must not take the served one down
                if current is None:
                    raise
                log.exception("tenant %s: could not open its newly published index version; the loaded "
                              "version %s keeps serving and the next check tries again", tenant, current.version)
                fresh = None
            with self._lock:
                if fresh is not None:
                    if current is not None:
                        self._retired.append((now, current.reader))
                    current = fresh
                slot = _Slot(current, now)
                self._slots[tenant] = slot
                self._close_retired(now)
            return slot

    def _close_retired(self, now: float) -> None:
        keep = []
        for retired_at, reader in self._retired:
            if now - retired_at >= RETIRE_AFTER_S:
                reader.close()
            else:
                keep.append((retired_at, reader))
        self._retired = keep

    def checked_at(self, tenant: str) -> float | None:
        """When the tenant's published pointer was last read (``time.monotonic()``; ``None`` before
        its first request)."""
        slot = self._slots.get(tenant)
        return None if slot is None else slot.checked_at

    def loaded(self) -> dict[str, PublishedVersion]:
        """The versions loaded now, by tenant (read without opening anything)."""
        with self._lock:
            return {t: s.published for t, s in self._slots.items() if s.published is not None}

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                if slot.published is not None:
                    slot.published.close()
            for _, reader in self._retired:
                reader.close()
            self._slots.clear()
            self._retired.clear()
