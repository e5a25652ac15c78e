"""Recommendations from a tenant's published index and collaborative model.

Strategies, in order:

* ``hybrid``: the user has events the collaborative model knows. Candidates come from the index
  (nearest ``collab`` vectors to the user's folded-in vector, plus nearest ``content`` vectors to
  their taste, which brings in new items), re-ranked by the exact collaborative score blended with
  content similarity and popularity (per-tenant weights).
* ``content_profile``: events, but none the model knows (new items, or no model yet): nearest items
  to the user's taste vector (weighted, recency-decayed mean of their items' text embeddings).
* ``cold_start_profile``: no usable events, but profile attributes or preferences: nearest items to
  the embedding of their text.
* ``popular``: nothing known about the user.

Everything is computed from the user's events as stored in the CDP at request time, so an accepted
event shapes the very next request (what the API keeps of a user between requests,
:class:`UserState`, is checked against their events on every request: :mod:`lodestar.user_state`).
Items the user interacted with are excluded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from lodestar.collab import CollabModel, aged_item_weights, item_weights_and_sums
from lodestar.controls import Controls, Rule, apply
from lodestar.event_weights import event_weight
from lodestar.explain import (
    COLLAB_SOURCE,
    CONTENT_SOURCE,
    POPULAR_SOURCE,
    PROFILE_SOURCE,
    QUERY_SOURCE,
    SIMILAR_SOURCE,
    Trace,
)
from lodestar.features import DAY
from lodestar.filters import ItemFilter
from lodestar.index import COLLAB, Hit, IndexReader, PublishedVersion

if TYPE_CHECKING:
    from lodestar.cdp import CdpStore
    from lodestar.embed import Embedder
    from lodestar.tenant_config import TenantConfig

HYBRID = "hybrid"
PERSONALIZED = "content_profile"
COLD_START = "cold_start_profile"
POPULAR = "popular"
LIKED_CATEGORY_BOOST = 0.3  # share of the score range a liked category moves an item up
RERANK_HEAD = 50  # how many of the best collaborative candidates the content signal may reorder
RANKED_KEPT_MAX = 50  # the longest hybrid ranking a user state keeps (k=10 with rules or diversity: 50)
RANKED_MAX_BYTES = 16_000  # a ranking whose request's key is larger (a long exclusion list) is not kept


@dataclass
class Recommendation:
    items: list[Hit]
    strategy: str
    # What the items were ranked by (the auction scores sponsored items with the same signals).
    taste: np.ndarray | None = None  # the user's taste (content), or their profile text's embedding
    collab_query: np.ndarray | None = None  # the user's folded-in collaborative vector (hybrid only)
    excluded: frozenset[str] = frozenset()  # the user's own items and the request's exclude
    item_filter: ItemFilter | None = None  # the request's, with the user's disliked categories


def _recent(events: list[dict[str, Any]], config: TenantConfig) -> list[dict[str, Any]]:
    return sorted(events, key=itemgetter("ts"), reverse=True)[: config.max_profile_events]


def taste_vector(
    events: list[dict[str, Any]], vectors: dict[str, np.ndarray], config: TenantConfig
) -> np.ndarray | None:
    """Weighted, recency-decayed mean of interacted items' vectors; ``None`` if nothing positive."""
    half_life = config.recency_half_life_days
    recent = _recent(events, config)
    if not recent:
        return None
    newest = recent[0]["ts"]
    rows: list[np.ndarray] = []
    weights: list[float] = []
    for event in recent:
        vector = vectors.get(event["item_id"])
        weight = event_weight(event["type"], event.get("value"), config.event_weights)
        if vector is None or weight == 0.0:
            continue
        rows.append(vector)
        weights.append(weight * math.pow(0.5, (newest - event["ts"]) / DAY / half_life))
    w = np.asarray(weights)
    if not rows or w.clip(min=0.0).sum() <= 0.0:
        return None
    total = w @ np.stack(rows)  # one product (up to max_profile_events rows), not a sum of scaled copies
    norm = float(np.linalg.norm(total))
    return None if norm == 0.0 else (total / norm).astype(np.float32)


def user_taste(reader: IndexReader, events: list[dict[str, Any]], config: TenantConfig) -> np.ndarray | None:
    """The user's taste vector, reading only the content vectors of their recent items."""
    recent = _recent(events, config)
    return taste_vector(recent, reader.vectors({e["item_id"] for e in recent}), config) if recent else None


def interacted_items(events: list[dict[str, Any]]) -> set[str]:
    """Items the user did something with (an impression alone is not an interaction)."""
    return {e["item_id"] for e in events if e["type"] != "impression"}


def _scaled(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] over the candidates (all zeros when the signal is flat)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _hybrid(
    reader: IndexReader, model: CollabModel, item_weights: dict[str, float], query: np.ndarray,
    taste: np.ndarray | None, exclude: set[str], k: int, config: TenantConfig, item_filter: ItemFilter,
    trace: Trace | None = None, profile: tuple[np.ndarray, np.ndarray] | None = None,
    memo: Callable[[int], np.ndarray] | None = None,
) -> list[Hit]:
    limit = max(config.collab.candidates, k)
    # Candidates carry what ranking needs (id, popularity), as arrays; the head's full payloads and
    # content vectors are read once, below (converting hundreds of payloads costs more than the query).
    found = reader.candidates(query, limit, exclude, using=COLLAB, item_filter=item_filter)
    item_ids, popularity = found.item_ids, found.popularity
    if trace is not None:
        for item_id in item_ids:
            trace.source(item_id, COLLAB_SOURCE)
    if taste is not None:
        content_found = reader.candidates(taste, k, exclude, item_filter=item_filter)
        known = set(item_ids)
        extra = [n for n, item_id in enumerate(content_found.item_ids) if item_id not in known]
        if extra:
            item_ids = item_ids + [content_found.item_ids[n] for n in extra]
            popularity = np.concatenate([popularity, content_found.popularity[extra]])
        if trace is not None:
            for item_id in content_found.item_ids:
                trace.source(item_id, CONTENT_SOURCE)
    if not item_ids:
        return []
    weights = config.ranking
    raw_collab = model.scores(item_weights, item_ids, profile, memo)
    collab = _scaled(raw_collab)
    partial = weights.collab * collab + weights.popularity * popularity
    # Content similarity only reorders the head: content vectors are read for it alone, and full
    # payloads for the k that are returned.
    head = np.argsort(-partial, kind="stable")[: max(RERANK_HEAD, k)]
    head_ids = [item_ids[i] for i in head]
    content = np.zeros(len(head))
    if taste is not None and weights.content:
        vectors = reader.vectors(head_ids)
        sims = np.zeros(len(head_ids))
        if known := [n for n, item_id in enumerate(head_ids) if item_id in vectors]:
            sims[known] = np.stack([vectors[head_ids[n]] for n in known]) @ taste  # one product, not 50
        content = weights.content * _scaled(sims)
    final = partial[head] + content
    order = np.argsort(-final, kind="stable")[:k]
    if trace is not None:
        for n, i in enumerate(head[order]):
            trace.signals(item_ids[i], collab_score=raw_collab[i], popularity=popularity[i],
                          content_similarity=sims[order[n]] if taste is not None and weights.content else None)
    points = reader.points([head_ids[i] for i in order])
    # The vectors travel with the hits, so diversity does not fetch them again.
    return [Hit(head_ids[i], float(final[i]), points[head_ids[i]].payload, points[head_ids[i]].vector)
            for i in order if head_ids[i] in points]


def _kept_hybrid(
    reader: IndexReader, model: CollabModel, state: UserState, query: np.ndarray, exclude: frozenset[str],
    pool: int, config: TenantConfig, item_filter: ItemFilter, controls: Controls, trace: Trace | None,
) -> list[Hit]:
    """:func:`_hybrid` for ``state``, or the ranking it last led to when nothing it depends on
    changed: the index version (and its model), the state itself (it is replaced when the user's
    events change), the pool, the filter, the request's exclusions and the ranking settings. The
    ranked items' payloads and vectors are read again from the version (a ranking keeps ids and
    scores only). Traced requests (explanations) always rank anew, and keep no ranking (the
    collaborative scores they compute are kept: they are the same with or without a trace)."""
    key = (reader.version, pool, item_filter, controls.exclude, config.collab.candidates, config.ranking)
    latest = state.ranked.latest if trace is None else None
    if latest is not None and latest[0] == key:
        _key, ids, scores = latest
        points = reader.points(list(ids))
        return [Hit(item_id, float(score), points[item_id].payload, points[item_id].vector)
                for item_id, score in zip(ids, scores, strict=True) if item_id in points]
    ranked = _hybrid(reader, model, state.item_weights, query, state.taste, exclude, pool, config, item_filter, trace,
                     state.profile, state.ranked.collab_scores)
    if trace is None and len(ranked) <= RANKED_KEPT_MAX:
        ids = tuple(hit.item_id for hit in ranked)
        state.ranked.keep(key, ids, np.asarray([hit.score for hit in ranked]),
                          _ranking_nbytes(ids, controls.exclude, item_filter))
    return ranked


def _strings_nbytes(values: Iterable[Any]) -> int:
    """What a tuple's strings (and other values) take, with the tuple's pointers to them."""
    return sum(8 + (sys.getsizeof(v) if isinstance(v, str) else 24) for v in values)


def _ranking_nbytes(ids: tuple[str, ...], exclude: tuple[str, ...], item_filter: ItemFilter) -> int:
    """About what a kept ranking holds (measured with tracemalloc: 3.7 KB for 50 items whose ids
    are its own): the tuples, the scores, the ids, and the request's exclusions and filter values
    in its key, every string counted as if no one else held it (the Edge adapter's ids are shared
    with its sidecar, so there it counts high)."""
    filter_values = [*item_filter.categories, *item_filter.tags, *item_filter.exclude_categories]
    for condition in item_filter.attributes:
        filter_values += [condition.key, *condition.values, *condition.range]
    return 600 + 8 * len(ids) + _strings_nbytes(ids) + _strings_nbytes(exclude) + _strings_nbytes(filter_values)


def _content_ranked(
    reader: IndexReader, vector: np.ndarray, exclude: set[str], k: int, config: TenantConfig, item_filter: ItemFilter,
    trace: Trace | None = None, source: str = CONTENT_SOURCE,
) -> list[Hit]:
    """Nearest items to a taste or profile vector, re-ranked with popularity: among items that fit
    the taste, the ones people actually engage with come first."""
    hits = reader.nearest(vector, max(config.collab.candidates // 3, k), exclude, item_filter=item_filter)
    if not hits:
        return []
    similarity = _scaled(np.asarray([h.score for h in hits]))
    popularity = np.asarray([float(h.payload.get("popularity", 0.0)) for h in hits])
    # Multiplicative: popularity reorders items that fit, it never lifts one that does not.
    final = similarity * (1.0 + config.ranking.content_popularity * popularity)
    order = np.argsort(-final, kind="stable")[:k]
    if trace is not None:
        for i in order:
            trace.note(hits[i].item_id, source, content_similarity=hits[i].score, popularity=popularity[i])
    return [Hit(hits[i].item_id, float(final[i]), hits[i].payload) for i in order]


class KeptRanking:
    """The latest hybrid ranking a user state led to, and what it was ranked under (see
    :func:`_kept_hybrid`), and the collaborative scores its rankings computed (``collab``: by the
    model's item index, NaN where not scored; :meth:`lodestar.collab.CollabModel.scores`). ``latest``
    is replaced whole, so a reader in another thread sees one ranking or the next, never a mix.
    ``ledger``: called when what it holds changed (set by :class:`lodestar.user_state.UserStates`
    for a state it keeps, which then counts the state's :attr:`UserState.nbytes` again)."""

    __slots__ = ("latest", "ranking_nbytes", "collab", "ledger")

    def __init__(self) -> None:
        self.latest: tuple[tuple[Any, ...], tuple[str, ...], np.ndarray] | None = None  # key, ids, scores
        self.ranking_nbytes = 0
        self.collab: np.ndarray | None = None
        self.ledger: Callable[[], None] | None = None

    @property
    def nbytes(self) -> int:
        return self.ranking_nbytes + (0 if self.collab is None else self.collab.nbytes)

    def keep(self, key: tuple[Any, ...], ids: tuple[str, ...], scores: np.ndarray, nbytes: int) -> None:
        """Keep this ranking (``nbytes``: about what it holds, key included) unless it is too large."""
        if nbytes > RANKED_MAX_BYTES:
            return
        self.latest, self.ranking_nbytes = (key, ids, scores), nbytes
        if self.ledger is not None:
            self.ledger()

    def collab_scores(self, n_items: int) -> np.ndarray:
        """Where the state's collaborative scores are kept (a heavy user's EASE scores: 4 bytes an
        item of the model), made on first use. Two threads ranking at once may each make one; the
        one kept last stays, and the other's scores are computed again when next asked."""
        kept = self.collab
        if kept is None or len(kept) != n_items:
            kept = self.collab = np.full(n_items, np.nan, dtype=np.float32)
            if self.ledger is not None:
                self.ledger()
        return kept


@dataclass(frozen=True)
class UserState:
    """What a recommendation derives from a user's events alone, before any request's controls:
    kept between their requests while their events do not change (:mod:`lodestar.user_state`)."""

    seen: frozenset[str]  # items they interacted with (excluded from their recommendations)
    taste: np.ndarray | None  # their content taste
    item_weights: dict[str, float]  # per item, the weight of their events
    query: np.ndarray | None  # their folded-in collaborative vector
    profile: tuple[np.ndarray, np.ndarray] | None = None  # CollabModel.user_profile of item_weights
    # Per item, its events' type weights without recency (collab.item_weights_and_sums), and the
    # latest event's time: with them newer events are added without reading the history (advanced).
    item_sums: dict[str, float] = field(default_factory=dict)
    newest_ts: float | None = None
    newest_ids: frozenset[str] = frozenset()  # the ids of its events at newest_ts (still there: not erased)
    # Their latest hybrid ranking: the same state, index version, settings and controls rank the
    # same, so a repeated request reads the ranked items' points instead of ranking again.
    ranked: KeptRanking = field(default_factory=KeptRanking, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        """About what it takes in memory, with what keeps it (measured with tracemalloc: about 2 KB for
        a state of a few items, then a set entry per seen item, a dict entry and float per weight and
        a dict entry per item's sum: MovieLens' 610 users 24.3 MB, counted 33.0 MB), the edge
        engine's exclusion condition kept with ``seen`` (about 50 bytes an item, outside Python's
        heap), and its kept ranking's and collaborative scores' (:class:`KeptRanking`)."""
        arrays = sum(a.nbytes for a in (self.taste, self.query, *(self.profile or ())) if a is not None)
        return 2100 + arrays + 120 * len(self.seen) + 110 * len(self.item_weights) + 60 * len(self.item_sums) \
            + 100 * len(self.newest_ids) + self.ranked.nbytes


def derive_state(
    reader: IndexReader, model: CollabModel | None, events: list[dict[str, Any]], config: TenantConfig,
) -> UserState:
    seen = frozenset(interacted_items(events))
    weights, sums, _weighed = item_weights_and_sums(events, config) if seen else ({}, {}, 0)
    newest = max((event["ts"] for event in events), default=None)
    newest_ids = frozenset(event.get("id") for event in events if event["ts"] == newest)
    return rebased(UserState(seen, None, weights, None, item_sums=sums, newest_ts=newest, newest_ids=newest_ids),
                   reader, model, events, config)


def advanced(
    state: UserState, newer: list[dict[str, Any]], reader: IndexReader, model: CollabModel | None,
    recent: list[dict[str, Any]], config: TenantConfig,
) -> UserState:
    """``state`` once ``newer`` events were added to the history it came from, each later (``ts``)
    than all of it, without reading that history: the items they interacted with join ``seen``, the
    item weights age and gain theirs (:func:`lodestar.collab.aged_item_weights`), and taste,
    profile and query are derived anew from the user's ``recent`` events (their latest
    ``config.max_profile_events`` at least, the newer ones among them), as :func:`rebased` does.
    What :func:`derive_state` makes of the whole history, up to rounding."""
    weights, sums = aged_item_weights(state.item_weights, state.item_sums, newer, config)
    newest = max(event["ts"] for event in newer)
    return rebased(UserState(state.seen | interacted_items(newer), None, weights, None, item_sums=sums,
                             newest_ts=newest, newest_ids=frozenset(e.get("id") for e in newer if e["ts"] == newest)),
                   reader, model, recent, config)


def rebased(
    state: UserState, reader: IndexReader, model: CollabModel | None, recent: list[dict[str, Any]],
    config: TenantConfig,
) -> UserState:
    """``state`` for another index version and model: what depends on them (taste, profile, query)
    derived anew, from the user's ``recent`` events (their latest ``config.max_profile_events`` at
    least, as the taste reads) and the state's item weights, without reading their whole history."""
    profile = model.user_profile(state.item_weights) if model is not None and state.item_weights else None
    return replace(state, taste=user_taste(reader, recent, config) if state.seen else None, profile=profile,
                   query=model.query_vector(state.item_weights, profile) if profile is not None else None,
                   ranked=KeptRanking())


def preference_events(preferences: dict[str, Any] | None, now: float) -> list[dict[str, Any]]:
    """Liked and disliked items as the events they stand for, as of now."""
    prefs = preferences or {}
    return ([{"item_id": i, "type": "like", "ts": now} for i in prefs.get("liked_items", [])]
            + [{"item_id": i, "type": "dislike", "ts": now} for i in prefs.get("disliked_items", [])])


def recommend(
    reader: IndexReader, events: list[dict[str, Any]], k: int, config: TenantConfig,
    model: CollabModel | None = None, profile_vector: np.ndarray | None = None,
    controls: Controls | None = None, preferences: dict[str, Any] | None = None, now: float | None = None,
    trace: Trace | None = None, state: UserState | None = None,
) -> Recommendation:
    """Up to ``k`` items for a user with these events (see the module's strategies). With a
    ``trace``, every stage notes why each item is where it is (:mod:`lodestar.explain`). ``state``:
    what :func:`derive_state` made of these events already (then ``events`` is not read again);
    only for preferences without liked or disliked items, which count as events of this moment."""
    controls = controls or Controls()
    now = time.time() if now is None else now
    prefs = preferences or {}
    liked = preference_events(prefs, now)
    if state is None or liked:
        if state is not None and not events:
            raise ValueError("a kept user state is for preferences without liked or disliked items: pass the events")
        state = derive_state(reader, model, list(events) + liked, config)
    rules = list(config.parsed_rules)
    if prefs.get("liked_categories"):
        rules.append(Rule("boost", ItemFilter(categories=tuple(prefs["liked_categories"])), LIKED_CATEGORY_BOOST,
                          label="preferences.liked_categories"))
    item_filter = controls.item_filter
    if prefs.get("disliked_categories"):
        item_filter = replace(item_filter, exclude_categories=tuple(prefs["disliked_categories"]))
    exclude = state.seen | frozenset(controls.exclude) if controls.exclude else state.seen
    pool = controls.pool(k, rules)
    taste, query = state.taste, state.query
    ranked: list[Hit] = []
    strategy = POPULAR
    if model is not None and query is not None:
        ranked = _kept_hybrid(reader, model, state, query, exclude, pool, config, item_filter, controls, trace)
        strategy = HYBRID
    for vector, name, source in ((taste, PERSONALIZED, CONTENT_SOURCE), (profile_vector, COLD_START, PROFILE_SOURCE)):
        if not ranked and vector is not None:
            ranked = _content_ranked(reader, vector, exclude, pool, config, item_filter, trace, source)
            strategy = name
    if not ranked:
        ranked, strategy = reader.popular(pool, exclude=exclude, item_filter=item_filter), POPULAR
        if trace is not None:
            for hit in ranked:
                trace.note(hit.item_id, POPULAR_SOURCE, popularity=hit.payload.get("popularity"))
    items = apply(reader, ranked, k, replace(controls, item_filter=item_filter), rules, now, trace)
    return Recommendation(items, strategy, taste if strategy in (HYBRID, PERSONALIZED) else
                          profile_vector if strategy == COLD_START else None,
                          query if strategy == HYBRID else None, frozenset(exclude), item_filter)


def profile_text(attributes: dict[str, Any], preferences: dict[str, Any] | None, config: TenantConfig) -> str:
    """The text describing a user without history: chosen profile attributes and liked categories."""
    parts: list[str] = []
    for key in config.profile_attributes:
        value = attributes.get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
        elif isinstance(value, list):
            parts.extend(str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip())
    for key in ("liked_categories", "categories"):
        value = (preferences or {}).get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value if isinstance(v, str))
    return ", ".join(dict.fromkeys(parts))


def nearest_controlled(
    reader: IndexReader, vector: np.ndarray, k: int, config: TenantConfig, controls: Controls | None = None,
    exclude: tuple[str, ...] = (), trace: Trace | None = None, source: str = QUERY_SOURCE,
) -> list[Hit]:
    """Nearest items to a vector under the request's controls and the tenant's rules."""
    controls = controls or Controls()
    rules = list(config.parsed_rules)
    hits = reader.nearest(vector, controls.pool(k, rules), set(controls.exclude) | set(exclude),
                          item_filter=controls.item_filter)
    if trace is not None:
        for hit in hits:
            trace.note(hit.item_id, source, content_similarity=hit.score, popularity=hit.payload.get("popularity"))
    return apply(reader, hits, k, controls, rules, trace=trace)


def similar_items(
    reader: IndexReader, item_id: str, k: int, config: TenantConfig, controls: Controls | None = None,
    trace: Trace | None = None,
) -> list[Hit] | None:
    """Items closest to ``item_id``; ``None`` if the item is not in the index."""
    item = reader.get(item_id)
    if item is None:
        return None
    return nearest_controlled(reader, item.vector, k, config, controls, exclude=(item_id,), trace=trace,
                              source=SIMILAR_SOURCE)


# Enough history to exclude everything a user interacted with and to build their taste vector.
HISTORY_LIMIT = 5000


def user_history(cdp: CdpStore, tenant: str, user_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """What the CDP holds of a user now: their latest events and their preferences."""
    return cdp.user_events(tenant, user_id, limit=HISTORY_LIMIT), cdp.get_preferences(tenant, user_id)


def recommend_for_user(
    published: PublishedVersion, cdp: CdpStore, embedder: Embedder, tenant: str, user_id: str, k: int,
    config: TenantConfig, controls: Controls | None = None, trace: Trace | None = None,
    history: tuple[list[dict[str, Any]], dict[str, Any] | None] | None = None, state: UserState | None = None,
) -> Recommendation:
    """A known (or unknown) user's recommendations from what the CDP holds of them now: their events
    and preferences (``history``, when the caller read it already: :func:`user_history`), and, when
    they have neither events nor liked items, the embedding of their profile text (cold start),
    which is the only case that needs the embedding model. With a kept ``state`` (what their
    current events derive to: :class:`lodestar.user_state.UserStates`), ``history``'s events may be
    empty: they are not read again."""
    events, preferences = history if history is not None else user_history(cdp, tenant, user_id)
    profile_vector = None
    seen = state.seen if state is not None else interacted_items(events)
    if not seen and not (preferences or {}).get("liked_items"):
        user = cdp.get_user(tenant, user_id)
        text = profile_text(user["attributes"] if user else {}, preferences, config)
        profile_vector = embedder.encode([text])[0] if text else None
    return recommend(published.reader, events, k, config, published.model, profile_vector, controls, preferences,
                     trace=trace, state=state)


def session_events(item_ids: list[str], now: float) -> list[dict[str, Any]]:
    """An anonymous visitor's items (oldest first) as the view events they stand for, one second
    apart and ending now, so the latest item counts most."""
    return [{"item_id": item_id, "type": "view", "ts": now - len(item_ids) + n} for n, item_id in enumerate(item_ids)]


def recommend_for_session(
    published: PublishedVersion, item_ids: list[str], k: int, config: TenantConfig, controls: Controls | None = None,
    now: float | None = None, trace: Trace | None = None,
) -> Recommendation:
    """Recommendations for an anonymous visitor from the items they just interacted with."""
    events = session_events(item_ids, time.time() if now is None else now)
    return recommend(published.reader, events, k, config, published.model, None, controls, trace=trace)
