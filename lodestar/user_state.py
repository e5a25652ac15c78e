"""What a user's history derives to, kept between their requests while it holds.

A recommendation used to read the user's whole history (up to 5,000 events) and derive from it,
on every request, the same things: the items they interacted with, their taste vector, their
items' weights and their folded-in collaborative vector. For a heavy user that was most of the
request. :class:`UserStates` keeps those (:class:`lodestar.recommend.UserState`) per tenant, user
and the configuration they were derived under, and checks on every request that the user's events
are still the ones they came from: ``CdpStore.user_events_mark`` (their count and
latest write, an index read) against the mark they were derived at. Any new or erased event of
theirs changes the mark, so an accepted event still shapes the very next request, in this
process or any other writing to the same CDP. The mark is read before the events and again before
a state is kept, and a state is kept only under the mark of exactly the events it came from
(:meth:`UserStates._keep` says how).

A new event of theirs does not start them over either: the events written since the kept state's
mark are added to it (:func:`lodestar.recommend.advanced`: the items they interacted with join
the seen ones, every item's weight ages by the newer events that weigh and gains theirs, and
taste, profile and query are derived anew from the latest ``max_profile_events`` events), which
reads those events and the latest few hundred, not up to 5,000, and gives what reading the whole
history would, up to rounding. Only where that is all that changed (:meth:`UserStates._advanced`:
events added and none erased, the state's newest events still there, at most ``ADVANCE_MAX`` added,
each later than every event the state came from and no two at the same time, the history within
``HISTORY_LIMIT``); anything else reads the history.

A new index version (each materialization publishes one) does not start every user over: their
kept state is rebased on it (:func:`lodestar.recommend.rebased`: taste, collaborative profile and
query derived anew from their latest ``max_profile_events`` events and the kept item weights), which
reads a few hundred events, not up to 5,000.

A kept state keeps its latest hybrid ranking too (:class:`lodestar.recommend.KeptRanking`: the
ranked items' ids and scores, and what they were ranked under: the index version, the pool, the
filter, the request's exclusions and the ranking settings; up to 50 items, what k=10 with rules
or diversity ranks, and longer ones are not kept). The same user asking the same again
with nothing new (another widget of the page, a reload, a second page view before its event is
sent) is answered from it: the ranked items' points are read again from the version, and the
rules, diversity and ads are applied as on every request; nothing is queried or scored again.
Anything else ranks anew and keeps the new ranking instead. Explanations always rank anew.
A ranking anew of a heavy user (more items than candidates, whose EASE scores are read from the
candidates' rows of B) keeps the collaborative scores it computed with the state too
(``KeptRanking.collab``: 4 bytes per item of the model, 48 KB at the default ``ease_max_items``
of 12,000), so that the next ranking of the same state (another page, exclusion or filter) scores
only the candidates it has not met; each kept score is the very value computing it again gives.
MovieLens: 82 of the 610 users keep them, 3.2 MB in all (37.0 MB held with their states and
rankings, under the default budget).

Not kept: a user whose preferences like or dislike items (those count as events of the moment of
the request, so what they derive to changes with the clock). The preferences themselves are read on
every request.

Not kept either: a user without events (unknown ids cost nothing). An erasure through the API or
the console forgets the user's state at once (another process's is never used again: the mark
changed).

The budget (``LODESTAR_USER_STATE_MB``, default 48) is in megabytes, counted from each state's
:attr:`~lodestar.recommend.UserState.nbytes` (MovieLens' 610 users, 100,836 ratings, count 33.0 MB
where tracemalloc measures 24.3 MB, each item's weight sum included; a small tenant's, 4.5-6.3 KB
each against 4.5-5.5 KB before those sums), counted
again whenever its kept ranking changes (about 1-4 KB more: ids and scores, and the request's
exclusions and filter values, every string counted as its own; a ranking counted above 16 KB, for
a long exclusion list, is not kept) and when it first keeps collaborative scores, least recently
used first out; 0 turns keeping off. Outside it: the edge adapter's last 256 exclusion conditions
(``lodestar.index.edge._recent_exclusion``), as before.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from lodestar.errors import InvalidInput
from lodestar.recommend import HISTORY_LIMIT, UserState, advanced, derive_state, rebased

if TYPE_CHECKING:
    from lodestar.cdp import CdpStore
    from lodestar.index import PublishedVersion
    from lodestar.tenant_config import TenantConfig

DEFAULT_MB = 48
ADVANCE_MAX = 100  # events added since a kept state's mark that are added to it, not read with the history


def derivation_key(config: TenantConfig) -> tuple[Any, ...]:
    """The settings :func:`lodestar.recommend.derive_state` reads: a state derived under others is
    not reused (a configuration change, or an experiment's variant, derives anew)."""
    return (config.max_profile_events, config.recency_half_life_days, tuple(sorted(config.event_weights.items())),
            config.collab.recency_half_life_events, config.collab.recency_floor)


class UserStates:
    def __init__(self, budget_mb: float = DEFAULT_MB) -> None:
        self.budget = int(budget_mb * 1_000_000)  # bytes
        # (tenant, user, derivation key) -> (events mark, index version, state, its nbytes)
        self._entries: OrderedDict[tuple[Any, ...], tuple[tuple[int, float | None], str, UserState, int]] = OrderedDict()
        self._held = 0
        self._forgets = 0  # erasures seen: a state derived while one happened is not kept
        self._lock = threading.Lock()
        self.hits = self.rebases = self.advances = self.misses = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> UserStates:
        raw = (os.environ if environ is None else environ).get("LODESTAR_USER_STATE_MB", str(DEFAULT_MB))
        try:
            budget = float(raw)
        except ValueError:
            budget = -1.0
        if not 0 <= budget < float("inf"):
            raise InvalidInput(f"LODESTAR_USER_STATE_MB={raw!r}: give the megabytes one API process may keep of "
                               "users' derived states (0 keeps none)")
        return cls(budget)

    def read(
        self, published: PublishedVersion, cdp: CdpStore, tenant: str, user_id: str, config: TenantConfig,
    ) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None, UserState | None]:
        """The user's ``(events, preferences, state)``: ``events`` is ``None`` when the state was
        kept (they were not read); ``state`` is ``None`` when it may not be kept (see the module)."""
        preferences = cdp.get_preferences(tenant, user_id)
        prefs = preferences or {}
        if self.budget == 0 or prefs.get("liked_items") or prefs.get("disliked_items"):
            return cdp.user_events(tenant, user_id, limit=HISTORY_LIMIT), preferences, None
        forgets = self._forgets
        mark = cdp.user_events_mark(tenant, user_id)  # before the events: a write in between is seen next time
        key = (tenant, user_id, derivation_key(config))
        with self._lock:
            entry = self._entries.get(key)
            kept = entry[2] if entry is not None and entry[0] == mark else None
            if kept is not None and entry[1] == published.version:
                self._entries.move_to_end(key)
                self.hits += 1
                return None, preferences, kept
            if kept is not None:
                self.rebases += 1
        if kept is not None:  # the same events, another index version
            recent = cdp.user_events(tenant, user_id, limit=min(config.max_profile_events, HISTORY_LIMIT))
            state = rebased(kept, published.reader, published.model, recent, config)
            self._keep(cdp, key, mark, published.version, state, forgets)
            return None, preferences, state
        if entry is not None and (state := self._advanced(published, cdp, tenant, user_id, config, entry, mark)):
            self._keep(cdp, key, mark, published.version, state, forgets)
            return None, preferences, state
        with self._lock:
            self.misses += 1
        events = cdp.user_events(tenant, user_id, limit=HISTORY_LIMIT)
        state = derive_state(published.reader, published.model, events, config)
        self._keep(cdp, key, mark, published.version, state, forgets)
        return events, preferences, state

    def _advanced(
        self, published: PublishedVersion, cdp: CdpStore, tenant: str, user_id: str, config: TenantConfig,
        entry: tuple[tuple[int, float | None], str, UserState, int], mark: tuple[int, float | None],
    ) -> UserState | None:
        """The kept state of ``entry`` with the events written since its mark added
        (:func:`lodestar.recommend.advanced`), or ``None`` when that is not what changed, and the
        history must be read. Added only when all of these hold:

        - events were added and none erased: the new mark's count is the old one's plus the events
          written after the old mark, and the state's newest events (by id) are still the newest
          before the added ones (an erasure by another process removed them, whatever the clocks
          that stamped the writes around it did);
        - at most ``ADVANCE_MAX`` of them, each later (``ts``) than every event the state came from
          (one arriving out of order takes its place in the history), no two at the same ``ts``
          (the stores may order such ties differently in the two reads, and their order weighs);
        - the history still within ``HISTORY_LIMIT`` (past it the oldest events drop out of what is
          derived);
        - the mark unchanged once they were read (an erasure or an event meanwhile reads anew)."""
        (count, latest), _version, state, _nbytes = entry
        added = mark[0] - count
        if latest is None or not 0 < added <= ADVANCE_MAX or mark[0] > HISTORY_LIMIT or not state.seen \
                or state.newest_ts is None or not state.newest_ids:
            return None
        newer = cdp.user_events_written_after(tenant, user_id, latest, limit=ADVANCE_MAX + 1)
        stamps = {event["ts"] for event in newer}
        if len(newer) != added or len(stamps) != added or min(stamps) <= state.newest_ts:
            return None
        recent = cdp.user_events(tenant, user_id, limit=min(config.max_profile_events, HISTORY_LIMIT))
        still = {event["id"] for event in recent[added:] if event["ts"] == state.newest_ts}
        if still != state.newest_ids or cdp.user_events_mark(tenant, user_id) != mark:
            return None
        with self._lock:
            self.advances += 1
        return advanced(state, newer, published.reader, published.model, recent, config)

    def _keep(
        self, cdp: CdpStore, key: tuple[Any, ...], mark: tuple[int, float | None], version: str, state: UserState,
        forgets: int,
    ) -> None:
        """Keeps ``state`` under ``mark`` when it came from exactly the events that mark counts:

        - never under a mark of no events: a first event that landed after the mark was read, then
          an erasure, would bring that mark back with the erased item in the state;
        - not when the mark moved while the history was read (an event landed in between);
        - not when an erasure was forgotten meanwhile (it would be kept after its ``forget``).

        Any other mark cannot come back: events are only added or all erased, and each write
        stamps a later time."""
        nbytes = state.nbytes
        if mark[0] == 0 or nbytes > self.budget or cdp.user_events_mark(key[0], key[1]) != mark:
            return
        with self._lock:
            if self._forgets != forgets:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old[3]
            state.ranked.ledger = functools.partial(self._recount, key)  # before another thread can rank
            self._entries[key] = (mark, version, state, nbytes)
            self._held += nbytes
            self._trim()

    def _recount(self, key: tuple[Any, ...]) -> None:
        """What the state kept under ``key`` holds changed (its ranking): count it again, and make
        room within the budget."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            nbytes = entry[2].nbytes
            self._held += nbytes - entry[3]
            self._entries[key] = (entry[0], entry[1], entry[2], nbytes)
            self._trim()

    def _trim(self) -> None:
        """Under the lock: the least recently used states out until the budget holds."""
        while self._held > self.budget:
            _key, (_mark, _version, _state, dropped) = self._entries.popitem(last=False)
            self._held -= dropped

    def forget(self, tenant: str, user_id: str) -> None:
        """Drops the user's states: they were erased, and nothing derived from their events is used
        or kept again (a request deriving meanwhile does not keep what it derived)."""
        with self._lock:
            self._forgets += 1
            for key in [k for k in self._entries if k[0] == tenant and k[1] == user_id]:
                self._held -= self._entries.pop(key)[3]

    @property
    def held(self) -> int:
        """Bytes held, as :attr:`lodestar.recommend.UserState.nbytes` counts them."""
        return self._held
