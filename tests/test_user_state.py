"""What a user's history derives to is kept between their requests (lodestar.user_state) and never
outlives a change of their events, their preferences, the configuration or the index version."""

import gc
import time
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from litestar.testing import TestClient

from lodestar.cdp import open_cdp
from lodestar.collab import CollabModel
from lodestar.controls import Controls
from lodestar.errors import InvalidInput
from lodestar.explain import COLLAB_SOURCE, CONTENT_SOURCE, Trace
from lodestar.filters import ItemFilter
from lodestar.index import CANDIDATE_FIELDS, COLLAB, open_index_store
from lodestar.recommend import (
    HYBRID,
    RANKED_KEPT_MAX,
    _hybrid,
    derive_state,
    rebased,
    recommend,
    recommend_for_user,
    user_history,
)
from lodestar.records import parse_event
from lodestar.tenant_config import effective_config
from lodestar.user_state import UserStates
from serving.app import create_app

pytestmark = pytest.mark.model  # the session's published tenants (materialized with the real model)


@pytest.fixture(scope="module")
def shop(env):
    store = open_cdp(env.settings)
    published = open_index_store(env.settings).open_published("alpha")
    yield store, published, effective_config(store.get_tenant("alpha")["config"])
    published.close()
    store.close()


def _users(store):
    """The demo shop's own users (other tests add users of their own to this tenant)."""
    users = sorted({e["user_id"] for batch in store.read_changes("alpha", "events") for e in batch
                    if e["user_id"].startswith("u0")})
    assert len(users) >= 20
    return users


def _same_state(a, b):
    assert a.seen == b.seen and a.item_weights == b.item_weights
    for x, y in ((a.taste, b.taste), (a.query, b.query), *zip(a.profile or (None, None), b.profile or (None, None))):
        assert (x is None) == (y is None) and (x is None or np.array_equal(x, y))


def _close_state(a, b):
    """Equal up to rounding: what an advanced state and a state derived from the whole history share."""
    assert a.seen == b.seen and list(a.item_weights) == list(b.item_weights) and list(a.item_sums) == list(b.item_sums)
    assert np.allclose([a.item_weights[i] for i in a.item_weights], [b.item_weights[i] for i in a.item_weights],
                       rtol=1e-9, atol=1e-12)
    assert np.allclose([a.item_sums[i] for i in a.item_sums], [b.item_sums[i] for i in a.item_sums])
    assert a.newest_ts == b.newest_ts
    for x, y in ((a.taste, b.taste), (a.query, b.query), *zip(a.profile or (None, None), b.profile or (None, None))):
        assert (x is None) == (y is None) and (x is None or np.allclose(x, y, rtol=1e-5, atol=1e-6))


def test_every_users_recommendations_are_the_same_from_a_kept_state(shop):
    store, published, config = shop
    states = UserStates()
    for user in _users(store):
        fresh = recommend_for_user(published, store, None, "alpha", user, 10, config)  # from the history read now
        states.read(published, store, "alpha", user, config)  # derives and keeps
        events, preferences, state = states.read(published, store, "alpha", user, config)
        assert events is None and state is not None  # kept: the history was not read again
        kept = recommend_for_user(published, store, None, "alpha", user, 10, config, None, None, ([], preferences),
                                  state)
        assert [(h.item_id, round(h.score, 9)) for h in kept.items] == \
            [(h.item_id, round(h.score, 9)) for h in fresh.items], user
        assert kept.strategy == fresh.strategy
    assert states.hits == len(_users(store)) and states.misses == len(_users(store))


def test_a_new_event_an_erasure_or_liked_items_derive_anew(env, shop):
    store, published, config = shop
    user = f"state-{time.time_ns()}"
    items = [h.item_id for h in published.reader.popular(3)]
    states = UserStates()
    store.append_events("alpha", [parse_event({"user_id": user, "item_id": items[0], "type": "purchase", "ts": 1e9})])
    _events, _prefs, first = states.read(published, store, "alpha", user, config)
    assert first.seen == {items[0]}
    assert states.read(published, store, "alpha", user, config)[2] is first
    # Written through another connection, as another worker process would.
    other = open_cdp(env.settings)
    try:
        other.append_events("alpha", [parse_event({"user_id": user, "item_id": items[1], "type": "view", "ts": 1e9 + 1})])
    finally:
        other.close()
    events, _prefs, second = states.read(published, store, "alpha", user, config)
    # A later event is added to the kept state (the history is not read again), as if derived anew.
    assert events is None and states.advances == 1 and second.seen == {items[0], items[1]}
    _close_state(second, derive_state(published.reader, published.model, user_history(store, "alpha", user)[0], config))
    store.put_preferences("alpha", user, {"liked_items": [items[2]]})
    events, prefs, state = states.read(published, store, "alpha", user, config)
    assert state is None and events is not None and prefs["liked_items"] == [items[2]]  # likes count as of now
    store.put_preferences("alpha", user, {"liked_categories": ["coffee"]})
    assert states.read(published, store, "alpha", user, config)[2] is second  # categories do not touch the state
    store.erase_user("alpha", user)
    _events, _prefs, erased = states.read(published, store, "alpha", user, config)
    assert erased.seen == frozenset() and erased.query is None and erased.taste is None


def test_another_configuration_derives_anew_and_another_version_rebases(shop):
    store, published, config = shop
    user = _users(store)[0]
    states = UserStates()
    first = states.read(published, store, "alpha", user, config)[2]
    assert first.item_weights
    weights = {kind: weight * 3 + 1 for kind, weight in config.event_weights.items()}
    changed = effective_config({"event_weights": weights})
    other = states.read(published, store, "alpha", user, changed)[2]
    assert other is not first and other.item_weights != first.item_weights
    assert states.read(published, store, "alpha", user, config)[2] is first

    model = published.model
    order = list(reversed(range(len(model.item_ids))))  # another model: items in another order, other factors
    other_model = CollabModel(kind="svd", item_ids=[model.item_ids[i] for i in order],
                              factors=np.asarray(model.factors)[order] * 2.0 + 0.1,
                              damping=np.asarray(model.damping)[order])

    class Next:  # the next version, with that model
        reader, model, version = published.reader, other_model, published.version + "-next"

    # Another version rebases the kept state (its latest events read, not the whole history) ...
    events, _prefs, moved = states.read(Next(), store, "alpha", user, config)
    assert events is None and moved is not first and states.rebases == 1
    assert not np.array_equal(moved.profile[0], first.profile[0]) and not np.allclose(moved.query, first.query)
    _same_state(moved, derive_state(published.reader, other_model, user_history(store, "alpha", user)[0], config))
    assert states.read(Next(), store, "alpha", user, config)[2] is moved

    class Bare:  # ... and a version without a collaborative model drops what came from the model
        reader, model, version = published.reader, None, published.version + "-bare"

    bare = states.read(Bare(), store, "alpha", user, config)[2]
    assert bare.query is None and bare.profile is None and bare.item_weights == first.item_weights
    assert np.array_equal(bare.taste, first.taste)


class CountingReader:
    """The published reader, counting the queries made of it."""

    def __init__(self, reader):
        self._reader, self.queries = reader, 0

    def nearest(self, *args, **kwargs):
        self.queries += 1
        return self._reader.nearest(*args, **kwargs)

    def candidates(self, *args, **kwargs):
        self.queries += 1
        return self._reader.candidates(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._reader, name)


def test_a_hybrid_ranking_merges_both_queries_candidates_with_their_own_popularity(shop):
    """The hybrid ranking reads its candidates as arrays (``IndexReader.candidates``): the
    collaborative query's, then the content query's that it lacks, each once, each with the
    popularity its hit carries. Ranked by popularity alone, the answer is the merged list's most
    popular (ties in merge order), and every candidate's sources are noted (both for an item both
    queries found)."""
    store, published, config = shop
    reader, model = published.reader, published.model
    # Ten candidates from each query, so that the content query's own ones count in the answer.
    by_popularity = replace(config, ranking=replace(config.ranking, collab=0.0, content=0.0, popularity=1.0),
                            collab=replace(config.collab, candidates=10))
    shared = added = checked = 0
    for user in _users(store)[:15]:
        state = derive_state(reader, model, user_history(store, "alpha", user)[0], config)
        if state.query is None or state.taste is None:
            continue
        collab = reader.nearest(state.query, 10, state.seen, using=COLLAB, fields=CANDIDATE_FIELDS)
        content = reader.nearest(state.taste, 10, state.seen, fields=CANDIDATE_FIELDS)
        merged = list({h.item_id: h for h in collab}.values())
        merged += [h for h in content if h.item_id not in {m.item_id for m in merged}]
        expected = [h.item_id for h in sorted(merged, key=lambda h: -h.payload["popularity"])][:10]  # stable
        trace = Trace()
        ranked = _hybrid(reader, model, state.item_weights, state.query, state.taste, state.seen, 10, by_popularity,
                         ItemFilter(), trace, state.profile)
        assert [h.item_id for h in ranked] == expected
        assert set(trace.items) == {h.item_id for h in merged}
        for hit in merged:
            assert trace.items[hit.item_id]["sources"] == [COLLAB_SOURCE] * (hit in collab) + \
                [CONTENT_SOURCE] * (hit.item_id in {h.item_id for h in content})
        for hit in ranked:
            popularity = next(h.payload["popularity"] for h in merged if h.item_id == hit.item_id)
            assert trace.items[hit.item_id]["popularity"] == pytest.approx(popularity, abs=1e-6)
        shared += len({h.item_id for h in collab} & {h.item_id for h in content})
        added += len(set(expected) - {h.item_id for h in collab})
        checked += 1
    assert checked >= 5 and shared and added  # both queries' candidates shared, and content ones added


def test_a_kept_state_ranks_again_only_when_what_its_ranking_depends_on_changes(shop):
    store, published, config = shop
    user = next(u for u in _users(store) if recommend_for_user(published, store, None, "alpha", u, 10, config)
                .strategy == HYBRID)
    reader = CountingReader(published.reader)
    state = derive_state(reader, published.model, user_history(store, "alpha", user)[0], config)

    def ranked(k=10, settings=config, controls=None, trace=None):
        before = reader.queries
        answer = recommend(reader, [], k, settings, published.model, controls=controls, state=state, trace=trace)
        assert answer.strategy == HYBRID
        return [(h.item_id, h.score, h.payload, None if h.vector is None else h.vector.tolist())
                for h in answer.items], reader.queries - before

    first, queried = ranked()
    assert queried == 2 and len(first) == 10  # collaborative and content candidates
    assert ranked() == (first, 0)  # the same request again: the kept ranking, its points read anew
    fresh = derive_state(published.reader, published.model, user_history(store, "alpha", user)[0], config)
    assert [(h.item_id, h.score) for h in recommend(published.reader, [], 10, config, published.model,
                                                     state=fresh).items] == [row[:2] for row in first]
    category = first[0][2]["categories"][0]
    weights = effective_config({**store.get_tenant("alpha")["config"],
                                "ranking": {"collab": 1.0, "content": 0.5, "popularity": 0.2}})
    for change in ({"k": 5}, {"controls": Controls(item_filter=ItemFilter(categories=(category,)))},
                   {"controls": Controls(exclude=(first[0][0],))}, {"settings": weights}):
        answer, queried = ranked(**change)
        assert queried == 2, change  # ranked anew ...
        assert ranked(**change) == (answer, 0), change  # ... and kept for the next such request
    assert ranked()[1] == 2  # one ranking is kept, the latest
    explained, queried = ranked(trace=Trace())
    assert queried == 2 and explained == first and ranked()[1] == 0  # an explanation ranks anew, replaces nothing


def test_kept_rankings_are_counted_in_the_budget(shop):
    store, published, config = shop
    users = _users(store)
    states = UserStates()
    kept = [states.read(published, store, "alpha", user, config)[2] for user in users]
    unranked = states.held
    assert unranked == sum(state.nbytes for state in kept)

    def rank(user, state, controls=Controls(diversity=0.5)):
        recommend_for_user(published, store, None, "alpha", user, 10, config, controls, history=([], None),
                           state=state)

    for user, state in zip(users, kept, strict=True):
        rank(user, state)
    assert states.held == sum(state.nbytes for state in kept) > unranked + 1000 * len(users)
    # A ranking for a long list of exclusions is not kept (its key alone would be megabytes).
    user, state = users[0], kept[0]
    latest = state.ranked.latest
    rank(user, state, Controls(diversity=0.5, exclude=tuple(f"gone-{n:0300d}" for n in range(100))))
    assert state.ranked.latest is latest
    # Rankings make room as states do: under a budget the unranked states fit in, fewer stay.
    tight = UserStates(budget_mb=unranked * 1.05 / 1_000_000)
    again = [tight.read(published, store, "alpha", user, config)[2] for user in users]
    assert len(tight._entries) == len(users)
    for user, state in zip(users, again, strict=True):
        rank(user, state)
        assert tight.held <= tight.budget
    assert len(tight._entries) < len(users)


def test_a_heavy_users_kept_collaborative_scores_rank_the_same_and_are_counted(shop):
    """Users with more items than candidates (here: 3 candidates) keep their EASE scores in their
    state: ranked again with other exclusions, they rank exactly as from a state without kept
    scores, and the budget counts what the scores take."""
    store, published, config = shop
    assert published.model is not None and published.model.ease is not None
    few = replace(config, collab=replace(config.collab, candidates=3))
    states = UserStates()
    heavy = 0
    for user in _users(store):
        _events, _prefs, state = states.read(published, store, "alpha", user, few)
        fresh = UserStates(budget_mb=0).read(published, store, "alpha", user, few)  # its own state: nothing kept
        for exclude in ((), ("gone",), (), ("gone", "also-gone")):  # each ranks anew (a kept ranking aside)
            state.ranked.latest = None
            answers = [recommend_for_user(published, store, None, "alpha", user, 3, few, Controls(exclude=exclude),
                                          history=history, state=kept)
                       for history, kept in ((([], None), state), ((fresh[0], fresh[1]), None))]
            assert [(h.item_id, h.score) for h in answers[0].items] == [(h.item_id, h.score) for h in answers[1].items]
        if state.ranked.collab is not None:  # more items than the candidates (3 and up to 3 by content)
            heavy += 1
            assert len(state.ranked.collab) == len(published.model.item_ids) and len(state.profile[0]) > 3
            assert 3 <= int((~np.isnan(state.ranked.collab)).sum()) <= 6 * 3  # what its rankings scored
            again = rebased(state, published.reader, published.model, [], few)  # as for a new index version
            assert again.ranked.collab is None and state.ranked.collab is not None  # scores of a profile, not reused
        else:  # a light user's own rows are read: nothing kept
            assert state.profile is None or len(state.profile[0]) <= 6
    assert heavy >= 5, heavy
    assert states.held == sum(entry[2].nbytes for entry in states._entries.values())


def test_the_budget_bounds_what_is_kept(shop):
    store, published, config = shop
    users = _users(store)
    states = UserStates(budget_mb=0.04)
    for user in users:
        states.read(published, store, "alpha", user, config)
        assert states.held <= 40_000
    assert 0 < states.held and 1 < len(states._entries) < len(users)
    last = users[-1]
    assert states.read(published, store, "alpha", last, config)[0] is None  # the latest is kept
    off = UserStates(budget_mb=0)
    off.read(published, store, "alpha", last, config)
    assert off.read(published, store, "alpha", last, config)[0] is not None and off.held == 0
    nobody = UserStates()
    for n in range(50):  # ids nobody has events for: nothing to keep
        assert nobody.read(published, store, "alpha", f"stranger-{n}", config)[2].seen == frozenset()
    assert nobody.held == 0


def test_a_state_counts_about_what_it_takes_in_memory(shop):
    store, published, config = shop
    states = UserStates()
    kept = [states.read(published, store, "alpha", user, config)[2] for user in _users(store)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    again = [UserStates().read(published, store, "alpha", user, config)[2] for user in _users(store)]
    for user, state in zip(_users(store), again, strict=True):  # each keeps a ranking of the longest kind
        recommend_for_user(published, store, None, "alpha", user, 10, config, Controls(diversity=0.5),
                           history=([], None), state=state)
        assert state.ranked.latest is None or len(state.ranked.latest[1]) == RANKED_KEPT_MAX
    assert sum(state.ranked.latest is not None for state in again) >= len(again) // 2
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    counted = sum(state.nbytes for state in again)
    assert counted - sum(state.ranked.nbytes for state in again) == sum(state.nbytes for state in kept)
    assert 0.7 * traced < counted < 2.0 * traced, (counted, traced)


def test_the_budget_setting_is_checked():
    assert UserStates.from_env({"LODESTAR_USER_STATE_MB": "5"}).budget == 5_000_000
    assert UserStates.from_env({"LODESTAR_USER_STATE_MB": "0"}).budget == 0
    assert UserStates.from_env({}).budget == 48_000_000
    for bad in ("lots", "-1", "inf", "nan"):
        with pytest.raises(InvalidInput, match="LODESTAR_USER_STATE_MB"):
            UserStates.from_env({"LODESTAR_USER_STATE_MB": bad})


def test_an_event_written_while_the_history_is_read_is_not_kept_under_the_older_mark(env, shop):
    """The race an erasure could otherwise turn into serving an erased user's items: the first event
    lands after the mark (0 events) was read and before the events were."""
    store, published, config = shop
    user = f"race-{time.time_ns()}"
    item = published.reader.popular(1)[0].item_id

    class Racing:  # the CDP, with the user's first event written just before their events are read
        def __getattr__(self, name):
            return getattr(store, name)

        def user_events(self, tenant, user_id, limit=500):
            store.append_events(tenant, [parse_event({"user_id": user_id, "item_id": item, "type": "view", "ts": 1e9})])
            return store.user_events(tenant, user_id, limit)

    states = UserStates()
    _events, _prefs, state = states.read(published, Racing(), "alpha", user, config)
    assert state.seen == {item}  # this request sees the event ...
    assert states.held == 0  # ... but its state is not kept under the mark of no events
    store.erase_user("alpha", user)
    events, _prefs, after = states.read(published, store, "alpha", user, config)
    assert events == [] and after.seen == frozenset()


def test_a_first_event_then_an_erasure_while_the_history_is_read_is_not_kept(shop):
    """The mark of no events comes back after an erasure: nothing is kept under it."""
    store, published, config = shop
    user = f"aba-{time.time_ns()}"
    item = published.reader.popular(1)[0].item_id
    marks = []

    class Racing:  # the first event lands before the history is read; the erasure before the mark is read again
        def __getattr__(self, name):
            return getattr(store, name)

        def user_events(self, tenant, user_id, limit=500):
            store.append_events(tenant, [parse_event({"user_id": user_id, "item_id": item, "type": "view", "ts": 1e9})])
            return store.user_events(tenant, user_id, limit)

        def user_events_mark(self, tenant, user_id):
            if marks:
                store.erase_user(tenant, user_id)
            marks.append(store.user_events_mark(tenant, user_id))
            return marks[-1]

    states = UserStates()
    assert states.read(published, Racing(), "alpha", user, config)[2].seen == {item}
    assert marks[0] == (0, None) and states.held == 0
    store.erase_user("alpha", user)  # (done already if the mark was read again)
    events, _prefs, after = states.read(published, store, "alpha", user, config)
    assert events == [] and after.seen == frozenset()


def test_a_state_derived_while_the_user_was_erased_is_not_kept(shop):
    store, published, config = shop
    user = _users(store)[1]
    states = UserStates()

    class Erasing:  # the user is forgotten (erased elsewhere in this process) while their history is read
        def __getattr__(self, name):
            return getattr(store, name)

        def user_events(self, tenant, user_id, limit=500):
            states.forget(tenant, user_id)
            return store.user_events(tenant, user_id, limit)

    assert states.read(published, Erasing(), "alpha", user, config)[2].seen
    assert states.held == 0 and not states._entries
    states.read(published, store, "alpha", user, config)
    assert states.read(published, store, "alpha", user, config)[0] is None  # kept once nothing raced


def test_the_api_keeps_states_between_requests_and_forgets_an_erased_user(env, shop):
    store, published, _config = shop
    user = f"kept-{time.time_ns()}"
    items = [h.item_id for h in published.reader.popular(2)]
    store.append_events("alpha", [parse_event({"user_id": user, "item_id": items[0], "type": "purchase", "ts": 1e9})])
    auth = {"Authorization": f"Bearer {env.keys['alpha']}"}
    with TestClient(create_app(env.settings)) as client:
        states = client.app.state.user_states
        first = client.get(f"/v1/users/{user}/recommendations?k=5", headers=auth).json()
        hits = states.hits
        again = client.get(f"/v1/users/{user}/recommendations?k=5", headers=auth).json()
        assert states.hits == hits + 1 and [i["id"] for i in again["items"]] == [i["id"] for i in first["items"]]
        assert any(key[1] == user for key in states._entries)
        assert client.delete(f"/v1/users/{user}", headers=auth).status_code == 200
        assert not any(key[1] == user for key in states._entries)
        erased = client.get(f"/v1/users/{user}/recommendations?k=5", headers=auth).json()
        assert erased["strategy"] == "popular" and items[0] in [i["id"] for i in erased["items"]]  # not excluded


def test_events_added_to_a_kept_state_rank_as_the_whole_history_would(env, shop):
    """Each user's kept state, then a few later events of theirs (views, a purchase, a dislike, an
    impression, an item seen before): the next read adds them to the state without reading the
    history, and the state and its recommendations are those of the whole history read anew."""
    store, published, config = shop
    states = UserStates()
    popular = [h.item_id for h in published.reader.popular(40)]
    rng = np.random.default_rng(5)
    for n, user in enumerate(_users(store)[:12]):
        states.read(published, store, "alpha", user, config)
        newest = max(e["ts"] for e in user_history(store, "alpha", user)[0])
        history = [e["item_id"] for e in user_history(store, "alpha", user)[0]]
        kinds = ["view", "purchase", "dislike", "impression", "view"]
        items = [str(i) for i in rng.choice(popular, size=len(kinds), replace=False)]
        items[-1] = history[0]  # again an item of their history
        store.append_events("alpha", [parse_event({"user_id": user, "item_id": item, "type": kind, "ts": newest + 10 + k})
                                      for k, (item, kind) in enumerate(zip(items, kinds, strict=True))])
        events, _prefs, state = states.read(published, store, "alpha", user, config)
        assert events is None and states.advances == n + 1, user
        fresh = derive_state(published.reader, published.model, user_history(store, "alpha", user)[0], config)
        _close_state(state, fresh)
        ranked = recommend_for_user(published, store, None, "alpha", user, 10, config, None, None, ([], None), state)
        anew = recommend_for_user(published, store, None, "alpha", user, 10, config)
        assert [h.item_id for h in ranked.items] == [h.item_id for h in anew.items], user
        assert np.allclose([h.score for h in ranked.items], [h.score for h in anew.items], rtol=1e-6, atol=1e-9)
    assert states.misses == 12


def test_an_event_out_of_order_or_after_an_erasure_reads_the_history_again(env, shop):
    """What adding to a kept state cannot follow reads the whole history: an event older than the
    state's latest (it takes its place among them), an erasure by another process followed by new
    events (the count does not add up), and more events at once than ``ADVANCE_MAX``."""
    from lodestar.user_state import ADVANCE_MAX

    store, published, config = shop
    items = [h.item_id for h in published.reader.popular(5)]
    user = f"order-{time.time_ns()}"
    states = UserStates()

    def event(item, ts):
        return parse_event({"user_id": user, "item_id": item, "type": "view", "ts": ts})

    store.append_events("alpha", [event(items[0], 1.2e9), event(items[1], 1.2e9 + 5)])
    states.read(published, store, "alpha", user, config)
    store.append_events("alpha", [event(items[2], 1.2e9 + 1)])  # between the two: out of order
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is not None and states.advances == 0 and states.misses == 2 and items[2] in state.seen

    other = open_cdp(env.settings)  # another process erases the user; new events of theirs arrive
    try:
        other.erase_user("alpha", user)
        other.append_events("alpha", [event(items[3], 1.3e9 + k) for k in range(4)])
    finally:
        other.close()
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is not None and states.advances == 0 and state.seen == {items[3]}

    store.append_events("alpha", [event(items[4], 1.4e9 + k) for k in range(ADVANCE_MAX + 1)])
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is not None and states.advances == 0 and state.seen == {items[3], items[4]}
    store.append_events("alpha", [event(items[0], 1.5e9)])
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is None and states.advances == 1 and state.seen == {items[0], items[3], items[4]}
    # Two new events at one time (a batch sent without ts): the stores may order the tie otherwise
    # when the history is read, and the order weighs, so the history is read.
    store.append_events("alpha", [event(items[1], 1.6e9), event(items[2], 1.6e9)])
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is not None and states.advances == 1 and {items[1], items[2]} <= state.seen


def test_an_erasure_elsewhere_is_seen_whatever_the_clock_stamped_after_it(env, shop, monkeypatch):
    """Another process erases the user, then writes one event stamped before the kept state's mark
    (a clock stepped back) and one after: the count adds up and one event is written after the
    mark, but the state's newest event is gone, so nothing of the erased history is kept."""
    store, published, config = shop
    items = [h.item_id for h in published.reader.popular(3)]
    user = f"clock-{time.time_ns()}"
    states = UserStates()
    store.append_events("alpha", [parse_event({"user_id": user, "item_id": items[0], "type": "view", "ts": 1.2e9})])
    states.read(published, store, "alpha", user, config)
    _count, written = store.user_events_mark("alpha", user)
    other = open_cdp(env.settings)
    try:
        other.erase_user("alpha", user)
        with monkeypatch.context() as clock:
            clock.setattr(time, "time", lambda: written - 0.5)
            other.append_events("alpha", [parse_event({"user_id": user, "item_id": items[1], "type": "view",
                                                       "ts": 1.3e9})])
        other.append_events("alpha", [parse_event({"user_id": user, "item_id": items[2], "type": "view", "ts": 1.4e9})])
    finally:
        other.close()
    events, _prefs, state = states.read(published, store, "alpha", user, config)
    assert events is not None and states.advances == 0
    assert state.seen == {items[1], items[2]}  # the erased item is not among them
