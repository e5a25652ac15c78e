"""Incremental extracts, deletes and erasure, without Dagster."""

import pytest

from lodestar.embed import Embedder
from lodestar.index import open_index_store
from lodestar.lineage import (
    collab_fit,
    embeddings,
    evaluation_gate,
    feature_tables,
    index_build,
    publishing,
)
from lodestar.lineage.extracts import extract
from lodestar.lineage.files import TenantFiles, read_extract
from lodestar.records import parse_event, parse_item, parse_user

pytestmark = pytest.mark.model  # the real all-MiniLM-L6-v2 (the fast tier: pytest -m "not model")


def test_incremental_extract_merges_changes_and_sees_deletes(settings, store):
    files = TenantFiles(settings.tenant_dir("acme"))
    store.create_tenant("acme")
    store.upsert_items("acme", [parse_item({"id": str(n), "title": f"item {n}"}) for n in range(5)])
    first = extract(store, "acme", "items", files)
    assert (first.mode, first.rows, first.changed) == ("full", 5, 5)
    again = extract(store, "acme", "items", files)
    assert (again.mode, again.rows, again.changed) == ("incremental", 5, 0)
    store.upsert_items("acme", [parse_item({"id": "2", "title": "renamed"}),
                                parse_item({"id": "4", "title": "item 4", "deleted": True}),
                                parse_item({"id": "9", "title": "new"})])
    delta = extract(store, "acme", "items", files)
    assert (delta.mode, delta.rows, delta.changed, delta.deleted) == ("incremental", 6, 3, 1)
    df = read_extract(files, "items").set_index("id")
    assert df.loc["2", "title"] == "renamed" and bool(df.loc["4", "deleted"]) and df.loc["9", "title"] == "new"
    full = extract(store, "acme", "items", files, full=True)
    assert full.mode == "full" and sorted(read_extract(files, "items")["id"]) == sorted(df.index)


def test_an_erased_users_events_leave_the_extract(settings, store):
    files = TenantFiles(settings.tenant_dir("acme"))
    store.create_tenant("acme")
    store.upsert_users("acme", [parse_user({"id": u}) for u in ("gone", "kept")])
    store.append_events("acme", [parse_event({"user_id": u, "item_id": "1", "type": "view", "ts": 1.7e9 + t})
                                 for u in ("gone", "kept") for t in (1, 2)])
    assert extract(store, "acme", "events", files).rows == 4
    extract(store, "acme", "users", files)
    store.erase_user("acme", "gone")
    events = extract(store, "acme", "events", files)
    assert events.erased == 2 and set(read_extract(files, "events")["user_id"]) == {"kept"}
    users = extract(store, "acme", "users", files)
    assert users.deleted == 1


def _sync(store, settings, tenant):
    """One pass of every stage of a tenant, as the automation runs them; returns the stats by stage."""
    from lodestar.index import open_index_store
    from lodestar.tenant_config import effective_config

    files = TenantFiles(settings.tenant_dir(tenant))
    config = effective_config(store.get_tenant(tenant)["config"])
    for entity in ("items", "users", "events"):
        extract(store, tenant, entity, files)
    out = {"features": feature_tables.item_features(files, config, settings.embed_model)}
    out |= {"embeddings": embeddings.item_embeddings(files, Embedder(settings.embed_model, settings.cache_dir)),
           "model": collab_fit.collab_model(files, config),
           "evaluation": evaluation_gate.offline_evaluation(files, config, tenant)}
    index_store = open_index_store(settings)
    out["index"] = index_build.build_index(files, index_store, tenant, config)
    assert publishing.canary_problem(index_store, tenant, out["index"].version, out["index"].probe) is None
    publishing.publish(files, index_store, tenant)
    out["reader"] = index_store.open(tenant, out["index"].version)
    return out


def test_a_small_catalog_change_builds_the_index_from_the_published_version(settings, store):
    from tests.conftest import load_demo_tenant

    load_demo_tenant(store, settings, "shop", "shop", n_items=120, n_users=30)
    first = _sync(store, settings, "shop")
    assert first["index"].mode == "full" and first["model"].refit and not first["evaluation"].reused
    before = first["reader"].get("p00010")
    first["reader"].close()

    store.upsert_items("shop", [parse_item({"id": "p00003", "title": "Completely new title: a red kayak"}),
                                parse_item({"id": "p00007", "title": "gone", "deleted": True}),
                                parse_item({"id": "n1", "title": "A brand new inflatable paddle board"})])
    second = _sync(store, settings, "shop")
    index, reader = second["index"], second["reader"]
    try:
        assert (index.mode, index.upserted, index.deleted) == ("incremental", 2, 1), index.why
        # Two new texts: the run loads the model ahead of item_embeddings; those two are all it encodes.
        assert second["features"].new_texts == 2 and second["embeddings"].encoded == 2
        assert index.base_version == first["index"].version
        assert not second["model"].refit and second["evaluation"].reused
        assert reader.count() == index.items == first["index"].items  # one in, one out
        assert reader.get("p00007") is None and reader.get("n1").payload["title"].startswith("A brand new")
        assert reader.get("p00003").payload["title"] == "Completely new title: a red kayak"
        # The new item's own text finds it; an unchanged item kept its point.
        query = Embedder(settings.embed_model, settings.cache_dir).encode(["A brand new inflatable paddle board"])[0]
        assert reader.nearest(query, 1)[0].item_id == "n1"
        unchanged = reader.get("p00010")
        assert unchanged.payload == before.payload and (unchanged.vector == before.vector).all()
    finally:
        reader.close()
    third = _sync(store, settings, "shop")  # nothing changed since: no new version at all
    third["reader"].close()
    assert (third["index"].mode, third["index"].version) == ("unchanged", index.version), third["index"].why
    assert open_index_store(settings).published("shop") == index.version
    assert open_index_store(settings).versions("shop") == sorted({first["index"].version, index.version})


def test_a_changed_model_or_a_large_change_rebuilds_in_full(settings, store):
    from tests.conftest import load_demo_tenant

    load_demo_tenant(store, settings, "shop", "shop", n_items=100, n_users=30)
    _sync(store, settings, "shop")["reader"].close()
    # New positive interactions: the model is refitted, every collab vector may move.
    store.append_events("shop", [parse_event({"user_id": "u0001", "item_id": f"p{n:05d}", "type": "purchase",
                                              "ts": 1.7935e9 + n}) for n in range(40, 50)])
    after_events = _sync(store, settings, "shop")
    after_events["reader"].close()
    assert after_events["model"].refit and not after_events["evaluation"].reused
    assert after_events["index"].mode == "full" and "model" in after_events["index"].why
    # 30% of the catalog renamed: over index.incremental_max_fraction (10%).
    store.upsert_items("shop", [parse_item({"id": f"p{n:05d}", "title": f"renamed {n}"}) for n in range(30)])
    renamed = _sync(store, settings, "shop")
    renamed["reader"].close()
    assert renamed["index"].mode == "full" and "of items changed (more than 10%)" in renamed["index"].why
    assert not renamed["evaluation"].reused
