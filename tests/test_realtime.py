"""Issue 4 over HTTP: events, preferences, sessions, query controls, rules, isolation."""

import json
import time
from urllib.parse import quote

import pytest
from litestar.testing import TestClient

from lodestar.cdp import open_cdp
from serving.app import create_app

pytestmark = pytest.mark.model  # the real all-MiniLM-L6-v2 (the fast tier: pytest -m "not model")


@pytest.fixture(scope="module")
def client(env):
    with TestClient(create_app(env.settings)) as test_client:
        yield test_client


@pytest.fixture()
def store(env):
    cdp = open_cdp(env.settings)
    yield cdp
    cdp.close()


def _auth(env, tenant="alpha"):
    return {"Authorization": f"Bearer {env.keys[tenant]}"}


def _categories(store, tenant, body):
    return [store.get_item(tenant, i["id"])["categories"][0] for i in body["items"]]


def _items_of(store, tenant, category):
    return [i["id"] for b in store.read_changes(tenant, "items") for i in b if category in i["categories"] and i["available"]]


def test_events_are_durable_and_the_next_request_reflects_them(client, env, store):
    user = f"live-{time.time_ns()}"
    first = client.get(f"/v1/users/{user}/recommendations?k=5", headers=_auth(env)).json()
    assert first["strategy"] == "popular"
    coffee = _items_of(store, "alpha", "coffee")[:3]
    now = time.time()
    batch = {"events": [{"user_id": user, "item_id": i, "type": "purchase", "ts": now + n} for n, i in enumerate(coffee)]}
    response = client.post("/v1/events", json=batch, headers=_auth(env))
    assert response.status_code == 200 and response.json() == {"accepted": 3, "stored": 3, "rejected": []}
    assert {e["item_id"] for e in store.user_events("alpha", user)} == set(coffee)  # durable before the 2xx
    after = client.get(f"/v1/users/{user}/recommendations?k=5", headers=_auth(env)).json()
    assert after["strategy"] == "hybrid"
    assert not set(coffee) & {i["id"] for i in after["items"]}
    assert _categories(store, "alpha", after).count("coffee") > _categories(store, "alpha", first).count("coffee")
    again = client.post("/v1/events", json=batch, headers=_auth(env)).json()
    assert again["accepted"] == 3 and again["stored"] == 0  # same user, item, type and ts: stored once


def test_invalid_events_are_reported_by_index_and_valid_ones_kept(client, env, store):
    user = f"mixed-{time.time_ns()}"
    events = [{"user_id": user, "item_id": "p00001", "type": "view"},
              {"user_id": user, "item_id": "p00002", "type": "hover"},
              "not an object",
              {"user_id": user, "type": "click"}]
    body = client.post("/v1/events", json={"events": events}, headers=_auth(env)).json()
    assert body["accepted"] == 1
    assert [(r["index"], r["reason"].split(" ")[0]) for r in body["rejected"]] == [(1, "type"), (2, "an"), (3, "item_id")]
    assert len(store.user_events("alpha", user)) == 1

    atomic = client.post("/v1/events?atomic=true", json={"events": events}, headers=_auth(env))
    assert atomic.status_code == 422 and "atomic" in atomic.json()["detail"]
    assert [e["field"] for e in atomic.json()["errors"]] == ["events[1]", "events[2]", "events[3]"]
    assert len(store.user_events("alpha", user)) == 1  # nothing of the atomic batch was stored
    for bad in ({"events": []}, {"events": [{}] * 1001}, {"evnts": []}, [1]):
        assert client.post("/v1/events", json=bad, headers=_auth(env)).status_code == 422
    assert client.post("/v1/events", json={"events": [{"type": "view"}]}, headers=_auth(env)).status_code == 422


def test_events_of_one_tenant_never_change_another_tenants_recommendations(client, env):
    user = "r0002"  # a beta user; the same id does not exist for alpha
    before = client.get(f"/v1/users/{user}/recommendations?k=10", headers=_auth(env, "beta")).json()
    alpha_item = "p00005"
    client.post("/v1/events", json={"events": [{"user_id": user, "item_id": alpha_item, "type": "purchase"}]},
                headers=_auth(env))
    after = client.get(f"/v1/users/{user}/recommendations?k=10", headers=_auth(env, "beta")).json()
    assert [i["id"] for i in after["items"]] == [i["id"] for i in before["items"]]


def test_preferences_shape_the_next_recommendations(client, env, store):
    user = "u0004"
    before = client.get(f"/v1/users/{user}/recommendations?k=20", headers=_auth(env)).json()
    top_category = _categories(store, "alpha", before)[0]
    liked = _items_of(store, "alpha", "yoga")[0]
    prefs = {"liked_items": [liked], "disliked_categories": [top_category], "liked_categories": ["yoga"]}
    put = client.put(f"/v1/users/{user}/preferences", json=prefs, headers=_auth(env))
    assert put.status_code == 200 and put.json()["disliked_categories"] == [top_category]
    assert client.get(f"/v1/users/{user}/preferences", headers=_auth(env)).json()["liked_items"] == [liked]
    after = client.get(f"/v1/users/{user}/recommendations?k=20", headers=_auth(env)).json()
    categories = _categories(store, "alpha", after)
    assert top_category not in categories and liked not in {i["id"] for i in after["items"]}
    assert categories.count("yoga") > _categories(store, "alpha", before).count("yoga")
    bad = client.put(f"/v1/users/{user}/preferences", json={"liked_items": "x"}, headers=_auth(env))
    assert bad.status_code == 422
    assert client.put(f"/v1/users/{user}/preferences", json={}, headers=_auth(env)).status_code == 200


def test_session_recommendations_for_anonymous_visitors(client, env, store):
    garden = _items_of(store, "alpha", "garden")[:2]
    body = client.post("/v1/recommendations/session", json={"item_ids": garden, "k": 5}, headers=_auth(env)).json()
    assert body["strategy"] == "hybrid" and not set(garden) & {i["id"] for i in body["items"]}
    assert _categories(store, "alpha", body).count("garden") >= 3
    assert client.post("/v1/recommendations/session", json={"item_ids": []}, headers=_auth(env)).status_code == 422


FILTERS = [
    {"categories": ["kitchen"]},
    {"attributes": {"price": {"gte": 10, "lte": 50}}},
    {"attributes": {"brand": {"in": ["Acme", "Zeta"]}}},
    {"tags": ["sale"]},
]


@pytest.mark.parametrize("item_filter", FILTERS)
def test_filters_hold_on_every_endpoint(client, env, store, item_filter):
    from lodestar.filters import parse_filter

    spec = parse_filter(item_filter)
    encoded = quote(json.dumps(item_filter))
    responses = [
        client.get(f"/v1/users/u0001/recommendations?k=8&filter={encoded}", headers=_auth(env)),
        client.get(f"/v1/users/nobody/recommendations?k=8&filter={encoded}", headers=_auth(env)),
        client.get(f"/v1/items/p00001/similar?k=8&filter={encoded}", headers=_auth(env)),
        client.post("/v1/search", json={"query": "gift", "k": 8, "filter": item_filter}, headers=_auth(env)),
        client.post("/v1/recommendations/session", json={"item_ids": ["p00003"], "filter": item_filter},
                    headers=_auth(env)),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert items, response.request.url
        for item in items:
            stored = store.get_item("alpha", item["id"])
            assert spec.matches(stored), (item_filter, stored)


def test_invalid_filters_are_422_naming_the_field(client, env):
    bad = quote(json.dumps({"attributes": {"price": {"gte": "cheap"}}}))
    response = client.get(f"/v1/users/u0001/recommendations?filter={bad}", headers=_auth(env))
    assert response.status_code == 422 and "filter.attributes.price.gte" in response.json()["detail"]
    response = client.post("/v1/search", json={"query": "x", "filter": {"colour": "red"}}, headers=_auth(env))
    assert response.status_code == 422 and "unknown field 'colour'" in response.json()["detail"]
    assert client.get("/v1/items/p00001/similar?diversity=1.5", headers=_auth(env)).status_code == 422


def test_exclude_and_diversity(client, env, store):
    plain = client.get("/v1/items/p00001/similar?k=10", headers=_auth(env)).json()["items"]
    dropped = [i["id"] for i in plain[:3]]
    excluded = client.get(f"/v1/items/p00001/similar?k=10&exclude={','.join(dropped)}", headers=_auth(env)).json()
    assert not set(dropped) & {i["id"] for i in excluded["items"]}
    body = client.post("/v1/search", json={"query": "gift", "k": 10, "exclude": dropped}, headers=_auth(env)).json()
    assert not set(dropped) & {i["id"] for i in body["items"]}
    from lodestar.lineage.embeddings import read_embeddings
    from lodestar.lineage.files import TenantFiles

    ids, vectors = read_embeddings(TenantFiles(env.settings.tenant_dir("alpha")))
    by_id = dict(zip(ids, vectors, strict=True))

    def mean_similarity(body):
        v = [by_id[i["id"]] for i in body["items"]]
        return sum(float(a @ b) for n, a in enumerate(v) for b in v[n + 1:]) / (len(v) * (len(v) - 1) / 2)

    for url in ("/v1/items/p00001/similar?k=10", "/v1/users/u0001/recommendations?k=10"):
        focused = client.get(url, headers=_auth(env)).json()
        diverse = client.get(url + "&diversity=0.8", headers=_auth(env)).json()
        assert mean_similarity(diverse) < mean_similarity(focused) - 0.02, url
    focused = client.post("/v1/search", json={"query": "hiking boot", "k": 10}, headers=_auth(env)).json()
    diverse = client.post("/v1/search", json={"query": "hiking boot", "k": 10, "diversity": 0.8}, headers=_auth(env)).json()
    assert mean_similarity(diverse) < mean_similarity(focused) - 0.02


def test_tenant_rules_boost_bury_and_pin(client, env, store):
    original = store.get_tenant("alpha")["config"]
    url = "/v1/users/u0001/recommendations?k=10"
    try:
        base = client.get(url, headers=_auth(env)).json()["items"]
        base_categories = _categories(store, "alpha", {"items": base})
        top = base_categories[0]
        lifted = next(c for c in ("baby", "pets", "garden", "books", "audio") if c not in base_categories[:3])
        store.set_tenant_config("alpha", {**original, "rules": [
            {"type": "bury", "filter": {"categories": [top]}, "amount": 2.0},
            {"type": "boost", "filter": {"categories": [lifted]}, "amount": 2.0},
            {"type": "pin", "item_id": "p00011", "position": 1},
            {"type": "pin", "item_id": "p00023", "position": 2, "start": "2099-01-01T00:00:00Z"},
        ]})
        ruled = client.get(url, headers=_auth(env)).json()["items"]
        ruled_categories = _categories(store, "alpha", {"items": ruled})
        assert ruled[0]["id"] == "p00011"  # pinned
        assert "p00023" not in [i["id"] for i in ruled]  # its window has not started
        assert ruled_categories.count(top) < base_categories.count(top)
        assert ruled_categories.count(lifted) > base_categories.count(lifted)
    finally:
        store.set_tenant_config("alpha", original)
    assert client.get(url, headers=_auth(env)).json()["items"] == base


def test_served_lists_and_clicks_become_the_attribution_asset(client, env, store):
    from pipelines.run import materialize_in_process

    body = client.get("/v1/users/u0002/recommendations?k=5", headers=_auth(env)).json()
    clicked = body["items"][0]["id"]
    client.post("/v1/events", headers=_auth(env), json={"events": [
        {"user_id": "u0002", "item_id": clicked, "type": "click", "recommendation_id": body["recommendation_id"]}]})
    client.app.state.served_log.flush()
    served = {r["recommendation_id"]: r for r in store.read_served("alpha")}
    assert served[body["recommendation_id"]]["strategy"] == "hybrid"
    result = materialize_in_process(str(env.settings.data_dir), "alpha", selection=["cdp_events", "attribution_report"])
    assert result.success
    meta = next(e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == "attribution_report")
    assert meta["clicks"].value >= 1 and "hybrid" in meta["by strategy"].value


def test_an_event_taken_by_one_process_shapes_the_next_answer_of_another(env, store):
    """Two app instances (as two serving processes would be) share only the CDP store."""
    with TestClient(create_app(env.settings)) as first, TestClient(create_app(env.settings)) as second:
        user = f"roaming-{time.time_ns()}"
        assert second.get(f"/v1/users/{user}/recommendations", headers=_auth(env)).json()["strategy"] == "popular"
        pets = _items_of(store, "alpha", "pets")[:2]
        first.post("/v1/events", headers=_auth(env), json={"events": [
            {"user_id": user, "item_id": i, "type": "purchase"} for i in pets]})
        body = second.get(f"/v1/users/{user}/recommendations", headers=_auth(env)).json()
        assert body["strategy"] == "hybrid" and not set(pets) & {i["id"] for i in body["items"]}


def test_deleting_a_user_erases_them(client, env, store):
    user = f"leaving-{time.time_ns()}"
    client.post("/v1/events", headers=_auth(env), json={"events": [
        {"user_id": user, "item_id": i, "type": "purchase"} for i in _items_of(store, "alpha", "books")[:2]]})
    client.put(f"/v1/users/{user}/preferences", json={"liked_categories": ["books"]}, headers=_auth(env))
    assert client.get(f"/v1/users/{user}/recommendations", headers=_auth(env)).json()["strategy"] == "hybrid"
    response = client.delete(f"/v1/users/{user}", headers=_auth(env))
    assert response.status_code == 200 and response.json()["events"] == 2 and response.json()["preferences"] == 1
    assert store.user_events("alpha", user) == [] and store.get_preferences("alpha", user) is None
    assert client.get(f"/v1/users/{user}/recommendations", headers=_auth(env)).json()["strategy"] == "popular"
    # another tenant's key cannot erase anything of alpha's
    other = client.delete("/v1/users/u0001", headers=_auth(env, "beta")).json()
    assert other["events"] == 0 and store.user_events("alpha", "u0001")
