"""Incremental extracts, deletes and erasure, without Dagster."""

from lodestar.records import parse_event, parse_item, parse_user
from lodestar.stages import TenantFiles, extract, read_extract


def test_incremental_extract_merges_changes_and_sees_deletes(settings, store):
    files = TenantFiles(settings.tenant_dir("acme"))
    store.create_tenant("acme")
    store.upsert_items("acme", [parse_item({"id": str(n), "title": f"item {n}"}) for n in range(5)])
    first = extract(store, "acme", "items", files)
    assert (first["mode"], first["rows"], first["changed"]) == ("full", 5, 5)
    again = extract(store, "acme", "items", files)
    assert (again["mode"], again["rows"], again["changed"]) == ("incremental", 5, 0)
    store.upsert_items("acme", [parse_item({"id": "2", "title": "renamed"}),
                                parse_item({"id": "4", "title": "item 4", "deleted": True}),
                                parse_item({"id": "9", "title": "new"})])
    delta = extract(store, "acme", "items", files)
    assert (delta["mode"], delta["rows"], delta["changed"], delta["deleted"]) == ("incremental", 6, 3, 1)
    df = read_extract(files, "items").set_index("id")
    assert df.loc["2", "title"] == "renamed" and bool(df.loc["4", "deleted"]) and df.loc["9", "title"] == "new"
    full = extract(store, "acme", "items", files, full=True)
    assert full["mode"] == "full" and sorted(read_extract(files, "items")["id"]) == sorted(df.index)


def test_an_erased_users_events_leave_the_extract(settings, store):
    files = TenantFiles(settings.tenant_dir("acme"))
    store.create_tenant("acme")
    store.upsert_users("acme", [parse_user({"id": u}) for u in ("gone", "kept")])
    store.append_events("acme", [parse_event({"user_id": u, "item_id": "1", "type": "view", "ts": t})
                                 for u in ("gone", "kept") for t in (1, 2)])
    assert extract(store, "acme", "events", files)["rows"] == 4
    extract(store, "acme", "users", files)
    store.erase_user("acme", "gone")
    events = extract(store, "acme", "events", files)
    assert events["erased"] == 2 and set(read_extract(files, "events")["user_id"]) == {"kept"}
    users = extract(store, "acme", "users", files)
    assert users["deleted"] == 1
