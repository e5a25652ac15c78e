"""Hostile and careless input over HTTP, and poison that reached the CDP anyway: each case the
issue "Reliability and security" lists (items 3, 4, 6 and 7), on a tiny tenant with the hashing
embedder (fast tier)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import numpy as np
import pytest
from dagster import DagsterInstance, materialize
from litestar.testing import TestClient

from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import demo
from lodestar.cdp import cdp_session
from lodestar.errors import IndexEngineError
from lodestar.filters import AttributeCondition, ItemFilter
from lodestar.importer import import_files
from lodestar.index import open_index_store
from lodestar.keys import issue_key
from lodestar.records import event_id
from lodestar.settings import Settings
from pipelines.definitions import all_assets
from serving.app import create_app

MODEL = "hashing-64"


def _materialize(settings: Settings):
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TENANTS, ["acme"])
        return materialize(all_assets(), partition_key="acme", instance=instance, raise_on_error=False,
                           resources={"lodestar": LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)})


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings(data_dir=root / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        key = issue_key(store, "acme")
        import_files(store, settings, "acme", demo.write_demo(root / "in", "shop", n_items=60, n_users=15))
    assert _materialize(settings).success
    return settings, key


@pytest.fixture()
def client(tenant):
    settings, _ = tenant
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant[1]}"}


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text and "panicked" not in response.text
    return response.json()


# -- item 3: poison values ---------------------------------------------------------------------
@pytest.mark.parametrize("event, field", [
    ({"ts": 1e300}, "ts"),
    ({"ts": "9999-01-01T00:00:00Z"}, "ts"),
    ({"ts": "nan"}, "ts"),
    ({"ts": "inf"}, "ts"),
    ({"ts": 0}, "ts"),
    ({"ts": time.time() + 3 * 86400}, "ts"),
    ({"type": "rating", "value": 1e308}, "value"),
    ({"type": "rating", "value": "nan"}, "value"),
    ({"type": "purchase", "value": "-inf"}, "value"),
    ({"type": "rating", "value": 11}, "value"),
])
def test_poison_events_are_rejected_and_nothing_is_stored(client, tenant, event, field):
    # A fixed, valid ts unless the case is about ts: the id the event would be stored under is known.
    bad = {"user_id": "u0001", "item_id": "p00001", "type": "view", "ts": time.time() - 120, **event}
    good = {"user_id": "u0002", "item_id": "p00002", "type": "click", "ts": time.time() - 60}
    body = client.post("/v1/events", json={"events": [bad, good]}, headers=_auth(tenant)).json()
    assert body["accepted"] == 1 and body["stored"] == 1
    assert [r["index"] for r in body["rejected"]] == [0] and body["rejected"][0]["reason"].startswith(field)
    with cdp_session(tenant[0]) as store:
        stored = store.user_events("acme", "u0001", limit=100_000)
    assert all(e["ts"] < time.time() + 86400 for e in stored)
    poison_id = _id_of(bad)
    assert poison_id is None or poison_id not in {e["id"] for e in stored}


def _id_of(raw: dict) -> str | None:
    """The id the event would have been stored under (``None`` for a ts that is no number at all)."""
    try:
        ts = float(raw["ts"])
    except (TypeError, ValueError):
        return None
    return event_id({"user_id": raw["user_id"], "item_id": raw["item_id"], "type": raw["type"], "ts": ts})


def test_accepted_always_means_stored(client, tenant):
    """``ts: "nan"`` used to be answered accepted 1, stored 0."""
    body = client.post("/v1/events", json={"events": [{"user_id": "u9", "item_id": "p00003", "type": "view",
                                                       "ts": "nan"}]}, headers=_auth(tenant))
    assert _problem(body, 422)["errors"][0]["field"] == "events[0]"


def test_poison_that_reached_the_cdp_is_not_published(tmp_path):
    """A year-9999 view written to the CDP behind the API's back: the blocking popularity check
    fails, the published version keeps serving, and the check says what to do."""
    settings = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        import_files(store, settings, "acme", demo.write_demo(tmp_path / "in", "shop", n_items=60, n_users=15))
    assert _materialize(settings).success
    published = open_index_store(settings).published("acme")
    poison = {"user_id": "u0001", "item_id": "p00042", "type": "view", "value": None, "ts": 253402300799.0,
              "recommendation_id": None}
    with cdp_session(settings) as store:
        assert store.append_events("acme", [{**poison, "id": event_id(poison)}]) == 1
    result = _materialize(settings)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["popularity_sane"].passed
    assert "p00042" in checks["popularity_sane"].metadata["problems"].value
    assert open_index_store(settings).published("acme") == published


# -- item 4: NaN and infinities in filters; engine panics -----------------------------------------
@pytest.mark.parametrize("raw", [
    '{"attributes": {"price": {"gte": NaN}}}',
    '{"attributes": {"price": {"lt": Infinity}}}',
    '{"attributes": {"price": {"gt": 1e999}}}',
    '{"attributes": {"price": {"eq": NaN}}}',
    '{"attributes": {"price": {"in": [1, NaN]}}}',
    '{"attributes": {"price": NaN}}',
])
def test_non_finite_numbers_in_filters_are_422(client, tenant, raw):
    for url in ("/v1/users/u0001/recommendations", "/v1/items/p00001/similar"):
        problem = _problem(client.get(f"{url}?filter={quote(raw)}", headers=_auth(tenant)), 422)
        assert problem["errors"][0]["field"].startswith("filter")


def test_attribute_names_a_query_engine_cannot_address_are_422(client, tenant):
    """Found by schemathesis: a name such as "8 |" was an invalid JSON path inside Qdrant (a 500)."""
    body = {"query": "boots", "filter": {"attributes": {"8 |": 3}}}
    problem = _problem(client.post("/v1/search", json=body, headers=_auth(tenant)), 422)
    assert problem["errors"][0]["field"] == "filter.attributes.8 |"


def test_an_unknown_query_parameter_is_refused_with_the_route_s_own(client, tenant):
    """A typo (``limt``) is a 422 naming it and the parameters the route takes, not silently ignored."""
    response = client.get("/v1/users/u1/recommendations?k=3&limt=5", headers=_auth(tenant))
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["field"] == "limt" and problem["errors"][0]["source"] == "query"
    # Its query parameters only: not the handler's dependencies (cdp, tenant, ...) nor the path's user_id.
    assert problem["detail"] == "limt: is not a parameter of this route (it takes: diversity, exclude, explain, filter, k)"
    assert client.get("/v1/users/u1/recommendations?k=3", headers=_auth(tenant)).status_code == 200


def test_non_finite_numbers_in_body_filters_are_refused(client, tenant):
    body = b'{"query": "boots", "filter": {"attributes": {"price": {"gte": NaN}}}}'
    response = client.post("/v1/search", content=body, headers={**_auth(tenant), "Content-Type": "application/json"})
    assert response.status_code in (400, 422) and "Traceback" not in response.text
    big = b'{"query": "boots", "filter": {"attributes": {"price": {"gte": 1e999}}}}'
    response = client.post("/v1/search", content=big, headers={**_auth(tenant), "Content-Type": "application/json"})
    assert response.status_code in (400, 422) and "Traceback" not in response.text


def test_an_engine_panic_becomes_an_index_engine_error(tmp_path, monkeypatch):
    """Qdrant Edge panics on a NaN bound against a payload index (a filter built behind the parser's
    back): the reader turns pyo3's PanicException, which no ``except Exception`` catches, into an
    IndexEngineError."""
    import lodestar.index.edge as edge

    monkeypatch.setattr(edge, "FILTER_INDEX_MIN_POINTS", 1)  # index the price attribute
    store = edge.EdgeIndexStore(tmp_path)
    builder = store.build("acme", 4)
    builder.upsert([f"i{n}" for n in range(8)], np.eye(8, 4, dtype=np.float32) + 0.1,
                   [{"title": f"t{n}", "popularity": 0.1, "attributes": {"price": float(n)}} for n in range(8)])
    builder.finish()
    reader = store.open("acme", builder.version)
    nan_filter = ItemFilter(attributes=(AttributeCondition("price", {"gte": float("nan")}),))
    try:
        assert "attributes.price" in reader._shard.info().payload_schema
        with pytest.raises(IndexEngineError):
            reader.nearest(np.ones(4, dtype=np.float32), 3, item_filter=nan_filter)
    finally:
        reader.close()


# -- item 6: malformed bodies ------------------------------------------------------------------
def test_malformed_bodies_are_client_errors(client, tenant):
    headers = {**_auth(tenant), "Content-Type": "application/json"}
    invalid_utf8 = b'{"query": "caf\xe9 \xff", "k": 3}'
    assert client.post("/v1/search", content=invalid_utf8, headers=headers).status_code in (400, 422)
    deep = b'{"query": "x", "filter": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _problem(client.post("/v1/search", content=deep, headers=headers), 422)["errors"][0]["field"] == "filter"
    deep_events = b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _problem(client.post("/v1/events", content=deep_events, headers=headers), 400)
    deep_filter = quote("[" * 10_000 + "]" * 10_000)  # as deep as a URL httpx sends allows
    _problem(client.get(f"/v1/items/p00001/similar?filter={deep_filter}", headers=_auth(tenant)), 422)


# -- item 7: one id rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("path_id", ["x" * 60_000, "a%00b", "%ff%fe", "tab%09id"])
def test_bad_ids_in_paths_are_422(client, tenant, path_id):
    for url in (f"/v1/users/{path_id}/recommendations", f"/v1/items/{path_id}/similar",
                f"/v1/users/{path_id}/preferences"):
        _problem(client.get(url, headers=_auth(tenant)), 422)
    _problem(client.delete(f"/v1/users/{path_id}", headers=_auth(tenant)), 422)


def test_get_and_delete_read_a_padded_id_alike(client, tenant):
    padded = client.get("/v1/users/%20u0003%20/recommendations?k=5", headers=_auth(tenant)).json()
    plain = client.get("/v1/users/u0003/recommendations?k=5", headers=_auth(tenant)).json()
    assert padded["strategy"] == plain["strategy"] == "hybrid"
    assert [i["id"] for i in padded["items"]] == [i["id"] for i in plain["items"]]


def test_huge_ids_in_bodies_and_lists_are_422(client, tenant):
    huge = "p" * 1_000_000
    _problem(client.put("/v1/users/u0001/preferences", json={"liked_items": [huge]}, headers=_auth(tenant)), 422)
    _problem(client.post("/v1/search", json={"query": "x", "exclude": [huge]}, headers=_auth(tenant)), 422)
    _problem(client.get(f"/v1/items/p00001/similar?exclude={huge[:5000]}", headers=_auth(tenant)), 422)
    _problem(client.post("/v1/recommendations/session", json={"item_ids": [huge]}, headers=_auth(tenant)), 422)


# -- item 10: strict typing, media types, 405 ------------------------------------------------------
def test_parameters_and_bodies_are_typed_strictly(client, tenant):
    for url in ("/v1/users/u0001/recommendations?k=1e2", "/v1/users/u0001/recommendations?k=5.0",
                "/v1/items/p00001/similar?diversity=nan", "/v1/items/p00001/similar?diversity=1e-1"):
        problem = _problem(client.get(url, headers=_auth(tenant)), 422)
        assert problem["errors"][0]["field"] in ("k", "diversity"), url
    for body in ({"query": "boots", "k": "5"}, {"query": "boots", "k": 5.0}, {"query": "boots", "diversity": "0.5"}):
        problem = _problem(client.post("/v1/search", json=body, headers=_auth(tenant)), 422)
        assert problem["errors"][0]["field"] in ("k", "diversity")
    assert client.post("/v1/search", json={"query": "boots", "k": 5}, headers=_auth(tenant)).status_code == 200


def test_bodies_must_be_sent_as_json(client, tenant):
    body = json.dumps({"query": "boots"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**_auth(tenant), **({"Content-Type": content_type} if content_type else {})}
        _problem(client.post("/v1/search", content=body, headers=headers), 415)


def test_a_wrong_method_is_405_with_allow(client, tenant):
    response = client.delete("/v1/search", headers=_auth(tenant))
    _problem(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"POST"}


def test_a_failed_popularity_check_keeps_blocking_publish_on_later_ticks(tmp_path):
    """Eager automation may rebuild the index on top of rejected features on a later tick; publishing
    waits for every blocking check upstream, so the rejected popularity still stops it."""
    from dagster import evaluate_automation_conditions

    from pipelines.definitions import build_definitions

    settings = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    resource = LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)
    defs = build_definitions(settings, resource)
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        import_files(store, settings, "acme", demo.write_demo(tmp_path / "in", "shop", n_items=60, n_users=15))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TENANTS, ["acme"])

        def run(selection=None):
            return materialize(all_assets(), partition_key="acme", instance=instance, raise_on_error=False,
                               resources={"lodestar": resource}, selection=selection)

        assert run().success
        poison = {"user_id": "u0001", "item_id": "p00042", "type": "view", "value": None, "ts": 253402300799.0,
                  "recommendation_id": None}
        with cdp_session(settings) as store:
            store.append_events("acme", [{**poison, "id": event_id(poison)}])
        rejected = run()
        assert not {e.check_name: e.passed for e in rejected.get_asset_check_evaluations()}["popularity_sane"]
        cursor = evaluate_automation_conditions(defs=defs, instance=instance).cursor
        # What eager automation does next: rebuild what is downstream of the features, on top of them.
        rebuilt = run(["item_embeddings", "collab_model", "offline_evaluation", "tenant_index"])
        assert rebuilt.success
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        requested = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
                     if "acme" in tick.get_requested_partitions(k)}
        assert "published_index" not in requested
