"""Published index versions per tenant, opened on a tenant's first request, hot-swapped when a new
version is published, and closed again when the tenant goes idle.

:meth:`TenantIndexes.get` is the only way a request reaches an index, and it takes the tenant
that the API key resolved to: a tenant's requests can only ever see that tenant's shard.

Memory follows the tenants being queried, not the tenants that exist: a tenant's index is opened
by its first request, and closed when nobody asked for it for ``idle_s`` seconds or when more than
``max_open`` tenants are open (the least recently used goes first). A closed tenant's next request
simply opens it again. Closing never pulls an index from under a request: the reader is retired,
like a reader replaced by a newer version, and closed ``RETIRE_AFTER_S`` later by the background
sweep, never by a request (closing hundreds of shards inline once made a tenant's requests wait).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lodestar.errors import IndexNotReady, InvalidInput
from lodestar.index import IndexReader, IndexStore, PublishedVersion

log = logging.getLogger("lodestar.serving")

# A retired reader stays open this long so that requests already using it can finish (a request
# takes milliseconds; its wait for a slot is bounded by LODESTAR_MAX_WAIT).
RETIRE_AFTER_S = 10.0
# A tenant not queried for this long is closed (LODESTAR_INDEX_IDLE, seconds).
IDLE_AFTER_S = 600.0
# At most this many tenants are held open; past it the least recently queried is closed
# (LODESTAR_MAX_OPEN_TENANTS). A small Qdrant Edge tenant touches tens of MB when opened.
MAX_OPEN_TENANTS = 256
# How often a background thread closes idle tenants and expired readers (requests only retire them).
SWEEP_EVERY_S = 5.0


@dataclass
class _Slot:
    published: PublishedVersion | None
    checked_at: float  # when the published pointer was last read
    used_at: float  # when a request last asked for the tenant


class TenantIndexes:
    def __init__(self, index_store: IndexStore, check_interval_s: float = 0.5, idle_s: float = IDLE_AFTER_S,
                 max_open: int = MAX_OPEN_TENANTS, clock: Callable[[], float] = time.monotonic,
                 sweep_every_s: float | None = SWEEP_EVERY_S) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self._store = index_store
        self._interval = check_interval_s
        self._idle_s = idle_s
        self._max_open = max_open
        self._clock = clock
        # Least recently used first: eviction looks at the front only, so a request's bookkeeping
        # costs the same at 1 and at 1,000 open tenants.
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._retired: deque[tuple[float, IndexReader]] = deque()  # oldest first
        self._lock = threading.Lock()  # guards _slots and _retired (held briefly, never during I/O)
        # One lock per tenant serializes its refreshes: opening one tenant's new version (reading a
        # model over the network, say) never holds up another tenant's requests. Eviction takes it
        # too, without waiting, so a tenant is never closed while its version is being opened.
        self._tenant_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if sweep_every_s:
            self._sweeper = threading.Thread(target=self._sweep_loop, args=(sweep_every_s,),
                                             name="close-idle-indexes", daemon=True)
            self._sweeper.start()

    @classmethod
    def from_env(cls, index_store: IndexStore, environ: Mapping[str, str] | None = None) -> TenantIndexes:
        """Limits from ``LODESTAR_INDEX_IDLE`` (seconds) and ``LODESTAR_MAX_OPEN_TENANTS``."""
        env = os.environ if environ is None else environ
        return cls(index_store, idle_s=_env_number(env, "LODESTAR_INDEX_IDLE", float, IDLE_AFTER_S),
                   max_open=_env_number(env, "LODESTAR_MAX_OPEN_TENANTS", int, MAX_OPEN_TENANTS))

    def current(self, tenant: str) -> PublishedVersion | None:
        """The tenant's open version when its pointer was read within ``check_interval_s`` (no I/O,
        so the event loop may ask); ``None`` when :meth:`get` has to look (off the loop)."""
        now = self._clock()
        slot = self._slots.get(tenant)
        if slot is None or slot.published is None or now - slot.checked_at >= self._interval:
            return None
        with self._lock:
            if self._slots.get(tenant) is not slot:
                return None
            slot.used_at = now
            self._slots.move_to_end(tenant)
        return slot.published

    def get(self, tenant: str) -> PublishedVersion:
        """The tenant's published version, opened on first use and reloaded when the pointer moved
        (checked at most every ``check_interval_s``). A version is only ever opened after it was
        published, so a half-built one is never served; index and model change together (the
        index port opens them as one)."""
        now = self._clock()
        slot = self._slots.get(tenant)
        if slot is None or now - slot.checked_at >= self._interval:
            slot = self._refresh(tenant, now)
        with self._lock:
            if self._slots.get(tenant) is slot:  # not evicted meanwhile (then it stays closed)
                slot.used_at = now
                self._slots.move_to_end(tenant)
            self._evict(now, keep=tenant)
        if slot.published is None:
            raise IndexNotReady(
                f"tenant {tenant!r} has no published index yet; run `lodestar materialize --tenant {tenant}`"
            )
        return slot.published

    def _refresh(self, tenant: str, now: float) -> _Slot:
        while True:
            with self._lock:
                tenant_lock = self._tenant_locks[tenant]
            with tenant_lock:
                # Eviction drops a tenant's lock with its slot (memory follows the tenants being
                # queried): a lock taken from before an eviction is not the tenant's any more.
                if self._tenant_locks.get(tenant) is tenant_lock:
                    return self._refresh_locked(tenant, now)

    def _refresh_locked(self, tenant: str, now: float) -> _Slot:
        """Under the tenant's lock: its slot, reloaded when the pointer moved."""
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
                    self._retired.append((self._clock(), current.reader))  # now: opening may have taken a while
                current = fresh
            slot = _Slot(current, now, now)
            self._slots[tenant] = slot  # a known tenant keeps its place; get() moves it to the end
            self._evict(now, keep=tenant)
            return slot

    def _evict(self, now: float, keep: str | None = None) -> None:
        """Under ``_lock``: retire the tenants idle for ``idle_s`` and those past ``max_open`` (least
        recently used first; never ``keep``, the tenant being asked for)."""
        victims, held = [], []
        try:
            for tenant, slot in self._slots.items():
                if len(self._slots) - len(victims) <= self._max_open and now - slot.used_at < self._idle_s:
                    break
                tenant_lock = self._tenant_locks[tenant]
                # A tenant being refreshed is in use: it stays, and is looked at again next time.
                if tenant != keep and tenant_lock.acquire(blocking=False):
                    held.append(tenant_lock)
                    victims.append(tenant)
            for tenant in victims:
                slot = self._slots.pop(tenant)
                del self._tenant_locks[tenant]  # held here, so no refresh of the tenant is under way
                if slot.published is not None:
                    self._retired.append((now, slot.published.reader))
        finally:
            for tenant_lock in held:
                tenant_lock.release()

    def sweep(self) -> None:
        """Retire idle tenants and close the retired readers whose grace period is over (the
        background thread does this every ``sweep_every_s``)."""
        now = self._clock()
        with self._lock:
            self._evict(now)
            closing = []
            while self._retired and now - self._retired[0][0] >= RETIRE_AFTER_S:
                closing.append(self._retired.popleft()[1])
        _close(closing)

    def _sweep_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again; requests sweep as well
                log.exception("closing idle tenant indexes failed")

    def checked_at(self, tenant: str) -> float | None:
        """When the tenant's published pointer was last read (on the clock, ``time.monotonic()`` by
        default; ``None`` before its first request and after it was closed)."""
        slot = self._slots.get(tenant)
        return None if slot is None else slot.checked_at

    def loaded(self) -> dict[str, PublishedVersion]:
        """The versions loaded now, by tenant (read without opening anything)."""
        with self._lock:
            return {t: s.published for t, s in self._slots.items() if s.published is not None}

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        with self._lock:
            readers = [s.published.reader for s in self._slots.values() if s.published is not None]
            readers += [reader for _, reader in self._retired]
            self._slots.clear()
            self._retired.clear()
        _close(readers)


def _close(readers: list[IndexReader]) -> None:
    for reader in readers:
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - one reader failing to close must not keep the others open
            log.exception("closing index version %s of tenant %s failed", reader.version, reader.tenant)
        else:
            log.debug("tenant %s: index version %s closed", reader.tenant, reader.version)


def _env_number(env: Mapping[str, str], var: str, kind: type, default: float) -> float:
    text = env.get(var, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 1:
        raise InvalidInput(f"{var} must be a number >= 1, not {text!r}", field=var)
    return value
