"""What a user's history derives to is kept between their requests (lodestar.user_state) and never
outlives a change of their events, their preferences, the configuration or the index version."""

import time

import numpy as np
import pytest

from lodestar.cdp import open_cdp
from lodestar.errors import InvalidInput
from lodestar.index import open_index_store
from lodestar.recommend import derive_state, recommend_for_user, user_history
from lodestar.records import parse_event
from lodestar.tenant_config import effective_config
from lodestar.user_state import UserStates

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
    for x, y in ((a.taste, b.taste), (a.query, b.query)):
        assert (x is None) == (y is None) and (x is None or np.array_equal(x, y))


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
    assert events is not None and second.seen == {items[0], items[1]}
    _same_state(second, derive_state(published.reader, published.model, user_history(store, "alpha", user)[0], config))
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

    class Renamed:  # the same index under another version name
        reader, model, version = published.reader, published.model, published.version + "-next"

    # Another version rebases the kept state (its latest events read, not the whole history) ...
    events, _prefs, moved = states.read(Renamed(), store, "alpha", user, config)
    assert events is None and moved is not first and states.rebases == 1
    _same_state(moved, derive_state(published.reader, published.model, user_history(store, "alpha", user)[0], config))
    assert states.read(Renamed(), store, "alpha", user, config)[2] is moved

    class Bare:  # ... and a version without a collaborative model drops what came from the model
        reader, model, version = published.reader, None, published.version + "-bare"

    bare = states.read(Bare(), store, "alpha", user, config)[2]
    assert bare.query is None and bare.profile is None and bare.item_weights == first.item_weights
    assert np.array_equal(bare.taste, first.taste)


def test_the_budget_bounds_what_is_kept(shop):
    store, published, config = shop
    users = _users(store)
    states = UserStates(budget=300)
    for user in users:
        states.read(published, store, "alpha", user, config)
        assert states.held <= 300
    assert 0 < states.held
    last = users[-1]
    assert states.read(published, store, "alpha", last, config)[0] is None  # the latest is kept
    off = UserStates(budget=0)
    off.read(published, store, "alpha", last, config)
    assert off.read(published, store, "alpha", last, config)[0] is not None and off.held == 0


def test_the_budget_setting_is_checked():
    assert UserStates.from_env({"LODESTAR_USER_STATE_BUDGET": "5000"}).budget == 5000
    assert UserStates.from_env({}).budget == 250_000
    for bad in ("lots", "-1"):
        with pytest.raises(InvalidInput, match="LODESTAR_USER_STATE_BUDGET"):
            UserStates.from_env({"LODESTAR_USER_STATE_BUDGET": bad})
