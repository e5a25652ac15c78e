"""The CDP port's contract, run against every adapter: the embedded SQLite store, and ArangoDB when
LODESTAR_ARANGO_URL is set (reported as skipped otherwise; each run gets a database of its own,
dropped afterwards)."""

import os
import time
import uuid

import pytest

from lodestar.cdp import Watermark
from lodestar.errors import Conflict, InvalidInput, NotFound
from lodestar.records import parse_event, parse_item

T0 = 1_700_000_000.0  # a time events and catalog changes may carry (2023-11-14)

pytestmark = pytest.mark.contract


@pytest.fixture(params=["sqlite", "arango"])
def store(request, settings):
    if request.param == "sqlite":
        from lodestar.cdp.sqlite import SqliteCdpStore

        cdp = SqliteCdpStore(settings.cdp_path)
        yield cdp
        cdp.close()
        return
    url = os.environ.get("LODESTAR_ARANGO_URL")
    if not url:
        pytest.skip("LODESTAR_ARANGO_URL is not set: no ArangoDB server to run the contract against")
    from lodestar.cdp.arango import ArangoCdpStore, connect, init_schema

    user = os.environ.get("LODESTAR_ARANGO_USER", "root")
    password = os.environ.get("LODESTAR_ARANGO_PASSWORD", "")
    database = f"lodestar_contract_{uuid.uuid4().hex[:8]}"
    db = connect(url, database, user, password, create=True)
    init_schema(db)
    yield ArangoCdpStore(db, settle_s=0.0)
    connect(url, "_system", user, password).delete_database(database)


def _items(*ids, **fields):
    return [parse_item({"id": i, "title": f"item {i}", **fields}) for i in ids]


def _all(store, tenant, entity, since=None, batch_size=5000):
    return [r for batch in store.read_changes(tenant, entity, since, batch_size) for r in batch]


def test_tenants(store):
    store.create_tenant("acme", {"recency_half_life_days": 7})
    assert store.get_tenant("acme")["config"] == {"recency_half_life_days": 7}
    with pytest.raises(Conflict):
        store.create_tenant("acme")
    with pytest.raises(InvalidInput, match="tenant name"):
        store.create_tenant("Bad Name")
    assert [t["name"] for t in store.list_tenants()] == ["acme"]
    with pytest.raises(NotFound):
        store.upsert_items("ghost", _items("1"))


def test_upsert_is_idempotent_and_watermark_moves_only_on_change(store):
    store.create_tenant("acme")
    assert store.upsert_items("acme", _items("a", "b", "c")) == 3
    first = _all(store, "acme", "items")
    assert sorted(r["id"] for r in first) == ["a", "b", "c"]
    mark = Watermark(first[-1]["updated_at"], first[-1]["_key"])
    assert store.upsert_items("acme", _items("a", "b", "c")) == 0  # unchanged: nothing moves
    assert _all(store, "acme", "items", since=mark) == []
    store.upsert_items("acme", [parse_item({"id": "b", "title": "renamed"})])
    changed = _all(store, "acme", "items", since=mark)
    assert [(r["id"], r["title"]) for r in changed] == [("b", "renamed")]


def test_user_events_mark_changes_with_every_write_of_that_users_events(store):
    """What lodestar.user_state checks before reusing what a user's history derived to."""
    store.create_tenant("acme")
    store.create_tenant("other")
    assert store.user_events_mark("acme", "u") == (0, None)
    event = parse_event({"user_id": "u", "item_id": "i1", "type": "view", "ts": T0})
    store.append_events("acme", [event])
    first = store.user_events_mark("acme", "u")
    assert first[0] == 1 and first[1] is not None
    store.append_events("other", [event])
    store.append_events("acme", [parse_event({"user_id": "v", "item_id": "i1", "type": "view", "ts": T0})])
    assert store.user_events_mark("acme", "u") == first  # another tenant's and another user's events
    time.sleep(0.01)
    store.append_events("acme", [parse_event({"user_id": "u", "item_id": "i2", "type": "view", "ts": T0 + 1})])
    second = store.user_events_mark("acme", "u")
    assert second[0] == 2 and second[1] > first[1]
    store.append_events("acme", [{**event, "value": 5.0}])  # the same event (user, item, type, ts): kept as it was
    assert store.user_events_mark("acme", "u") == second
    store.erase_user("acme", "u")
    assert store.user_events_mark("acme", "u") == (0, None)
    assert store.user_events_mark("acme", "v")[0] == 1


def test_user_events_written_after_a_mark_are_the_ones_added_since(store):
    """What lodestar.user_state adds to a kept state: the user's events written after its mark,
    latest ``ts`` first, whatever their ``ts`` (here one older than those before the mark)."""
    store.create_tenant("acme")
    store.append_events("acme", [parse_event({"user_id": "u", "item_id": f"i{n}", "type": "view", "ts": T0 + n})
                                 for n in range(3)])
    count, written = store.user_events_mark("acme", "u")
    assert count == 3 and store.user_events_written_after("acme", "u", written) == []
    time.sleep(0.01)
    store.append_events("acme", [parse_event({"user_id": "u", "item_id": "late", "type": "view", "ts": T0 + 9}),
                                 parse_event({"user_id": "u", "item_id": "early", "type": "like", "ts": T0 - 9}),
                                 parse_event({"user_id": "v", "item_id": "other", "type": "view", "ts": T0 + 9})])
    added = store.user_events_written_after("acme", "u", written)
    assert [(e["item_id"], e["type"], e["ts"]) for e in added] == [("late", "view", T0 + 9), ("early", "like", T0 - 9)]
    assert added == [e for e in store.user_events("acme", "u") if e["item_id"] in ("late", "early")]
    assert [e["item_id"] for e in store.user_events_written_after("acme", "u", written, limit=1)] == ["late"]
    assert store.user_events_mark("acme", "u")[0] == count + len(added)


def test_deleted_ids_names_tombstones_only(store):
    store.create_tenant("acme")
    store.create_tenant("other")
    store.upsert_items("acme", _items("live", "gone"))
    store.upsert_items("acme", [parse_item({"id": "gone", "deleted": True})])
    store.upsert_items("other", [parse_item({"id": "live", "deleted": True})])
    store.upsert_users("acme", [{"id": "u", "attributes": {}, "deleted": False, "source_updated_at": None}])
    store.erase_user("acme", "u")
    assert store.get_item("acme", "gone") is None and store.get_user("acme", "u") is None
    assert store.deleted_ids("acme", "items", ["live", "gone", "never"]) == {"gone"}
    assert store.deleted_ids("acme", "users", ["u", "never"]) == {"u"}
    assert store.deleted_ids("other", "items", ["live", "gone"]) == {"live"}
    assert store.deleted_ids("acme", "items", [f"x{n}" for n in range(1200)] + ["gone"]) == {"gone"}
    with pytest.raises(InvalidInput):
        store.deleted_ids("acme", "events", ["x"])


def test_watermark_tie_break_pages_through_equal_timestamps(store):
    store.create_tenant("acme")
    store.upsert_items("acme", _items(*[f"i{n:03d}" for n in range(25)]))  # one stamp for all
    pages = list(store.read_changes("acme", "items", batch_size=10))
    assert [len(p) for p in pages] == [10, 10, 5]
    # Rows come in (updated_at, _key) order, each once; a watermark in the middle resumes after it.
    rows = [r for p in pages for r in p]
    assert [(r["updated_at"], r["_key"]) for r in rows] == sorted((r["updated_at"], r["_key"]) for r in rows)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 25
    mid = Watermark(pages[0][-1]["updated_at"], pages[0][-1]["_key"])
    assert [r["id"] for r in _all(store, "acme", "items", since=mid)] == ids[10:]
    assert Watermark.decode(mid.encode()) == mid


def test_stale_source_update_is_ignored_and_soft_delete_is_seen(store):
    store.create_tenant("acme")
    store.upsert_items("acme", _items("a", updated_at=T0 + 200))
    assert store.upsert_items("acme", [parse_item({"id": "a", "title": "old", "updated_at": T0 + 100})]) == 0
    assert store.get_item("acme", "a")["title"] == "item a"
    store.upsert_items("acme", [parse_item({"id": "a", "title": "gone", "deleted": True, "updated_at": T0 + 300})])
    assert store.get_item("acme", "a") is None
    assert _all(store, "acme", "items")[0]["deleted"] is True
    assert store.count("acme", "items") == 0


def test_events_are_deduplicated_and_scoped_by_tenant(store):
    store.create_tenant("acme")
    store.create_tenant("zeta")
    events = [parse_event({"user_id": "u", "item_id": str(i), "type": "view", "ts": T0 + i}) for i in range(3)]
    assert store.append_events("acme", events) == 3
    assert store.append_events("acme", events) == 0
    assert [e["item_id"] for e in store.user_events("acme", "u")] == ["2", "1", "0"]
    assert store.user_events("zeta", "u") == []
    assert store.count("zeta", "events") == 0
    # The events-per-day quota's count: by when they were stored, not by their own ts.
    stored_by = time.time() + 1
    assert store.count_events_since("acme", 0.0) == 3 and store.count_events_since("zeta", 0.0) == 0
    assert store.count_events_since("acme", stored_by) == 0


def test_preferences_and_keys(store):
    store.create_tenant("acme")
    store.put_preferences("acme", "u", {"liked_categories": ["x"]})
    assert store.get_preferences("acme", "u") == {"liked_categories": ["x"]}
    assert store.get_preferences("acme", "other") is None
    store.add_api_key("acme", "kid", "hash")
    assert store.find_api_key("kid")[:2] == ("acme", "hash")
    assert store.find_api_key("nope") is None


def test_keys_have_scopes_and_can_be_listed_and_revoked(store):
    store.create_tenant("acme")
    store.create_tenant("zeta")
    store.add_api_key("acme", "all", "h1")
    store.add_api_key("acme", "browser", "h2", ("read",), "web shop")
    assert store.find_api_key("all").scopes == ("read", "events", "admin")
    assert store.find_api_key("browser")[:3] == ("acme", "h2", ("read",))
    listed = store.list_api_keys("acme")
    assert [(k["key_id"], k["scopes"], k["label"], k["revoked_at"]) for k in listed] == [
        ("all", ["read", "events", "admin"], "", None), ("browser", ["read"], "web shop", None)]
    assert "h1" not in str(listed)  # never the hash
    assert store.revoke_api_key("zeta", "browser") is False  # another tenant's key
    assert store.revoke_api_key("acme", "browser") is True
    assert store.find_api_key("browser") is None and store.find_api_key("all") is not None
    assert store.revoke_api_key("acme", "browser") is True  # revoking again is harmless
    assert next(k for k in store.list_api_keys("acme") if k["key_id"] == "browser")["revoked_at"] > 0
    assert store.list_api_keys("zeta") == [] and store.revoke_api_key("acme", "nope") is False


def test_latest_watermark_and_erasing_a_user(store):
    from lodestar.records import parse_user

    store.create_tenant("acme")
    assert store.latest_watermark("acme", "events") is None
    store.upsert_users("acme", [parse_user({"id": "u", "attributes": {"email": "u@example.com"}})])
    store.append_events("acme", [parse_event({"user_id": "u", "item_id": "1", "type": "view", "ts": T0}),
                                 parse_event({"user_id": "v", "item_id": "1", "type": "view", "ts": T0})])
    store.put_preferences("acme", "u", {"liked_items": ["1"]})
    store.log_served("acme", [{"recommendation_id": "r", "user_id": "u", "endpoint": "x", "strategy": "popular",
                               "items": ["1"], "ts": 1.0}])
    before = store.latest_watermark("acme", "users")
    assert store.erase_user("acme", "u") == {"events": 1, "preferences": 1, "served_lists": 1,
                                            "segment_memberships": 0, "ad_serves": 0}
    assert store.user_events("acme", "u") == [] and store.get_preferences("acme", "u") is None
    assert store.user_events("acme", "v") != []  # nobody else's data
    assert store.get_user("acme", "u") is None
    tombstone = [r for b in store.read_changes("acme", "users", since=before) for r in b]
    assert [(r["id"], r["deleted"], r["attributes"]) for r in tombstone] == [("u", True, {})]
    assert store.latest_watermark("acme", "users") > before


def test_latest_watermarks_of_every_tenant_in_one_call(store):
    for name in ("acme", "empty", "gone", "zeta"):
        store.create_tenant(name)
    store.upsert_items("acme", _items("b", "c", "a"))  # one stamp for all three: the greatest id wins
    store.upsert_items("zeta", _items("z"))
    store.upsert_items("gone", _items("g"))
    store.delete_tenant("gone")
    store.append_events("zeta", [parse_event({"user_id": "u", "item_id": "z", "type": "view", "ts": T0})])
    marks = store.latest_watermarks("items")
    assert set(marks) == {"acme", "zeta"}  # no rows, or deleted: not there
    assert marks == {t: store.latest_watermark(t, "items") for t in ("acme", "zeta")}
    assert marks["acme"].id == max(r["_key"] for r in _all(store, "acme", "items"))
    assert set(store.latest_watermarks("events")) == {"zeta"} and store.latest_watermarks("users") == {}
    store.upsert_items("acme", [parse_item({"id": "a", "title": "renamed"})])
    moved = store.latest_watermarks("items")
    assert moved["acme"] > marks["acme"] and moved["zeta"] == marks["zeta"]
    with pytest.raises(InvalidInput, match="entity must be one of"):
        store.latest_watermarks("orders")


def test_deleted_tenant_leaves_the_list_and_its_keys_stop_working(store):
    store.create_tenant("acme")
    store.add_api_key("acme", "kid", "hash")
    store.delete_tenant("acme")
    assert store.list_tenants() == [] and store.find_api_key("kid") is None



def test_cdp_session_closes_the_store_even_on_error_and_require_tenant_names_the_fix(settings, monkeypatch):
    import lodestar.cdp
    from lodestar.cdp import cdp_session, require_tenant
    from lodestar.cdp.sqlite import SqliteCdpStore

    closed = []

    class Spy(SqliteCdpStore):
        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(lodestar.cdp, "open_cdp", lambda s: Spy(s.cdp_path))
    with pytest.raises(NotFound, match="does not exist; create it with `lodestar tenants create ghost`"):
        with cdp_session(settings) as cdp:
            cdp.create_tenant("acme")
            assert require_tenant(cdp, "acme")["name"] == "acme"
            require_tenant(cdp, "ghost")
    assert closed == [True]
    with cdp_session(settings) as cdp:
        assert [t["name"] for t in cdp.list_tenants()] == ["acme"]
    assert closed == [True, True]


def test_audit_log_keeps_entries_per_tenant_newest_first_with_the_config_change(store):
    from lodestar.cdp import audit_entry

    store.create_tenant("acme")
    store.create_tenant("zeta")
    store.set_tenant_config("acme", {"ranking": {"content": 0.2}},
                            audit=audit_entry("key:k1", "config.set", before={}, after={"ranking": {"content": 0.2}}))
    store.append_audit("acme", audit_entry("operator", "quotas.set", "quotas", {"items": 0}, {"items": 10}))
    store.append_audit("zeta", audit_entry("cli:root", "key.create", "k9", None, {"scopes": ["read"]}))
    store.set_tenant_config("acme", {"ranking": {"content": 0.3}})  # no audit asked for: none written
    entries = store.read_audit("acme")
    assert [e["action"] for e in entries] == ["quotas.set", "config.set"]  # newest first, acme's only
    assert entries[0]["before"] == {"items": 0} and entries[0]["after"] == {"items": 10}
    assert entries[1]["actor"] == "key:k1" and entries[1]["after"] == {"ranking": {"content": 0.2}}
    assert all(isinstance(e["id"], str) and e["at"] > 0 for e in entries) and entries[0]["id"] != entries[1]["id"]
    assert [e["action"] for e in store.read_audit("acme", action_prefix="config.")] == ["config.set"]
    assert len(store.read_audit("acme", limit=1)) == 1
    assert [e["target"] for e in store.read_audit("zeta")] == ["k9"]
    assert store.get_tenant("acme")["config"] == {"ranking": {"content": 0.3}}


def test_console_accounts_members_and_failed_sign_ins(store):
    from lodestar.errors import UnknownTenant

    store.create_tenant("acme")
    store.create_tenant("zeta")
    store.put_account("ann@example.com", "hash-1")
    store.put_account("root@example.com", "hash-2", operator=True)
    assert store.get_account("nobody@example.com") is None
    ann = store.get_account("ann@example.com")
    assert (ann["password_hash"], ann["operator"], ann["failed_signins"]) == ("hash-1", False, 0)
    assert [(a["email"], a["operator"]) for a in store.list_accounts()] == [
        ("ann@example.com", False), ("root@example.com", True)]
    assert all("password_hash" not in a for a in store.list_accounts())

    store.record_signin("ann@example.com", False)
    store.record_signin("ann@example.com", False)
    ann = store.get_account("ann@example.com")
    assert ann["failed_signins"] == 2 and ann["last_failed_at"] > 0
    store.record_signin("ann@example.com", True)
    assert store.get_account("ann@example.com")["failed_signins"] == 0
    store.record_signin("ann@example.com", False)
    store.put_account("ann@example.com", "hash-3")  # a new password clears the count
    assert store.get_account("ann@example.com")["failed_signins"] == 0

    store.set_member("acme", "ann@example.com", "editor")
    store.set_member("zeta", "ann@example.com", "viewer")
    store.set_member("acme", "ann@example.com", "owner")  # a new role replaces the old one
    assert store.account_roles("ann@example.com") == {"acme": "owner", "zeta": "viewer"}
    assert [(m["email"], m["role"]) for m in store.list_members("acme")] == [("ann@example.com", "owner")]
    with pytest.raises(UnknownTenant, match="lodestar members add"):
        store.set_member("acme", "ghost@example.com", "viewer")
    with pytest.raises(NotFound):
        store.set_member("ghost", "ann@example.com", "viewer")
    assert store.remove_member("zeta", "ann@example.com") is True
    assert store.remove_member("zeta", "ann@example.com") is False
    assert store.account_roles("ann@example.com") == {"acme": "owner"}
    store.delete_tenant("acme")  # a deleted tenant's roles are gone
    assert store.account_roles("ann@example.com") == {}
    store.create_tenant("acme")  # and a new tenant of the same name starts without its members
    assert store.list_members("acme") == [] and store.account_roles("ann@example.com") == {}


def test_reports_key_last_use_and_finding_items_and_users(store):
    store.create_tenant("acme")
    store.create_tenant("zeta")
    assert store.get_report("acme", "activity") is None
    store.put_report("acme", "activity", [{"day": "2026-11-01", "events": 3}])
    store.put_report("acme", "activity", [{"day": "2026-11-02", "events": 4}])
    store.put_report("zeta", "activity", [])
    report = store.get_report("acme", "activity")
    assert report["rows"] == [{"day": "2026-11-02", "events": 4}] and report["updated_at"] > 0
    assert store.get_report("zeta", "activity")["rows"] == []

    store.add_api_key("acme", "k1", "h1")
    store.add_api_key("acme", "k2", "h2")
    store.touch_api_keys({"k1": 200.0})
    store.touch_api_keys({"k1": 100.0})  # an older use never replaces a newer one
    used = {k["key_id"]: k["last_used_at"] for k in store.list_api_keys("acme")}
    assert used == {"k1": 200.0, "k2": None}

    store.upsert_items("acme", _items("boot-1", "boot-2", "hat_1"))
    store.upsert_items("acme", [parse_item({"id": "x9", "title": "Waterproof BOOTS"})])
    store.upsert_items("zeta", _items("boot-9"))
    assert [i["id"] for i in store.find("acme", "items", "boot")] == ["boot-1", "boot-2", "x9"]
    assert [i["id"] for i in store.find("acme", "items", "boot", limit=1)] == ["boot-1"]
    assert [i["id"] for i in store.find("acme", "items", "e_")] == []  # LIKE's wildcards match themselves only
    assert store.find("acme", "items", "x9")[0]["title"] == "Waterproof BOOTS"
    store.upsert_users("acme", [{"id": "u1", "attributes": {}}, {"id": "u2", "attributes": {}},
                                {"id": "v1", "attributes": {}}])
    assert [u["id"] for u in store.find("acme", "users", "u")] == ["u1", "u2"]
    with pytest.raises(InvalidInput):
        store.find("acme", "events", "")


def test_experiments_are_created_once_changed_only_over_what_was_read_and_listed(store):
    store.create_tenant("acme")
    made = store.create_experiment("acme", {"name": "boost", "status": "running", "variants": []})
    assert made["created_at"] == made["updated_at"] > 0
    with pytest.raises(Conflict, match="already has an experiment"):
        store.create_experiment("acme", {"name": "boost"})
    with pytest.raises(NotFound):
        store.create_experiment("ghost", {"name": "boost"})
    changed = store.update_experiment("acme", {**made, "status": "stopped"}, if_updated_at=made["updated_at"])
    assert store.get_experiment("acme", "boost")["status"] == "stopped"
    with pytest.raises(Conflict, match="changed meanwhile"):
        store.update_experiment("acme", {**made, "status": "running"}, if_updated_at=made["updated_at"])
    store.create_experiment("acme", {"name": "another"})
    assert [e["name"] for e in store.list_experiments("acme")] == ["another", "boost"]
    assert store.get_experiment("acme", "missing") is None and changed["updated_at"] >= made["updated_at"]
    store.log_served("acme", [{"recommendation_id": "r1", "user_id": "u1", "endpoint": "recommendations",
                               "strategy": "hybrid", "items": ["a"], "ts": T0, "unit_id": "u1",
                               "experiments": [["boost", "treatment"]]},
                              {"recommendation_id": "r2", "user_id": None, "endpoint": "search",
                               "strategy": "semantic_search", "items": [], "ts": T0 + 1}])
    served = store.read_served("acme")
    assert [(s["unit_id"], s["experiments"]) for s in served] == [("u1", [["boost", "treatment"]]), (None, [])]
    store.delete_tenant("acme")
    store.create_tenant("acme")
    assert store.list_experiments("acme") == []


def test_ad_clicks_are_charged_once_and_only_while_the_budget_lasts(store):
    store.create_tenant("acme")

    def charge(ad_id, price, day="2026-11-22", daily=1000, total=2500):
        return store.charge_click("acme", {"ad_id": ad_id, "line_item": "li1", "advertiser": "adv", "price": price,
                                           "product": "p1", "user_id": ad_id, "day": day, "ts": T0},
                                  daily_budget=daily, total_budget=total)

    first = charge("a1", 600)
    assert first == {"charged": True, "reason": None, "spent_today": 600, "spent_total": 600}
    assert charge("a1", 600)["reason"] == "already charged"  # the same ad's click, again
    assert charge("a2", 600)["charged"]  # 600 < 1000: charged, to 1200 (overspend within one click)
    refused = charge("a3", 1)
    assert refused == {"charged": False, "reason": "budget spent", "spent_today": 1200, "spent_total": 1200}
    assert charge("a4", 700, day="2026-11-23")["spent_total"] == 1900  # a new day, the same total
    assert charge("a5", 700, day="2026-11-23")["spent_total"] == 2600
    assert charge("a6", 1, day="2026-11-24")["reason"] == "budget spent"  # the total is spent
    assert [c["ad_id"] for c in store.ad_charges("acme")] == ["a1", "a2", "a4", "a5"]
    assert store.ad_spend("acme", "li1", "2026-11-23") == {"spent_today": 1400, "spent_total": 2600}
    assert store.ad_charges("acme", "other") == []
    assert store.ad_charges("acme")[0] == {"ad_id": "a1", "line_item": "li1", "advertiser": "adv", "product": "p1",
                                           "user_id": "a1", "price": 600, "day": "2026-11-22", "ts": T0}
    assert store.ad_spend_all("acme", "2026-11-23") == {"li1": {"spent_today": 1400, "spent_total": 2600}}
    assert store.ad_spend_all("acme", "2026-11-30") == {"li1": {"spent_today": 0, "spent_total": 2600}}


def test_a_repeat_click_within_the_window_is_one_click(store):
    store.create_tenant("acme")

    def click(ad_id, user, product, ts, line_item="li1"):
        return store.charge_click("acme", {"ad_id": ad_id, "line_item": line_item, "advertiser": "adv", "price": 100,
                                           "product": product, "user_id": user, "day": "2026-11-22", "ts": ts},
                                  daily_budget=10_000, total_budget=10_000, repeat_window_s=600)

    assert click("a1", "u1", "p1", T0)["charged"]
    assert click("a2", "u1", "p1", T0 + 599)["reason"] == "repeat click within the click window"
    assert click("a3", "u2", "p1", T0 + 10)["charged"]  # another user
    assert click("a4", "u1", "p2", T0 + 10)["charged"]  # another product
    assert click("a5", "u1", "p1", T0 + 10, line_item="li2")["charged"]  # another line item
    assert click("a6", "u1", "p1", T0 + 601)["charged"]  # after the window
    assert store.ad_spend_all("acme", "2026-11-22") == {"li1": {"spent_today": 400, "spent_total": 400},
                                                        "li2": {"spent_today": 100, "spent_total": 100}}


def test_line_items_stamp_changes_with_any_line_item(store):
    store.create_tenant("acme")
    assert store.line_items_stamp("acme") == (0, 0.0)
    made = store.put_line_item("acme", {"id": "li1", "advertiser": "adv", "status": "active"})
    first = store.line_items_stamp("acme")
    assert first == (1, made["updated_at"])
    store.put_line_item("acme", {**made, "status": "paused"}, if_updated_at=made["updated_at"])
    assert store.line_items_stamp("acme")[1] > first[1]


def test_advertisers_their_keys_and_line_items(store):
    store.create_tenant("acme")
    made = store.create_advertiser("acme", {"id": "zeta-shoes", "name": "Zeta Shoes"})
    assert made["name"] == "Zeta Shoes" and store.get_advertiser("acme", "zeta-shoes")["id"] == "zeta-shoes"
    with pytest.raises(Conflict):
        store.create_advertiser("acme", {"id": "zeta-shoes", "name": "Other"})
    store.create_advertiser("acme", {"id": "acme-ads", "name": "Acme"})
    assert [a["id"] for a in store.list_advertisers("acme")] == ["acme-ads", "zeta-shoes"]
    store.add_api_key("acme", "adv1", "h", ("advertiser",), "zeta", advertiser="zeta-shoes")
    found = store.find_api_key("adv1")
    assert found.advertiser == "zeta-shoes" and found.scopes == ()  # an advertiser's key has no tenant scope
    assert [k["scopes"] for k in store.list_api_keys("acme")] == [["advertiser"]]
    assert store.find_api_key("adv1").tenant == "acme"

    item = store.put_line_item("acme", {"id": "li1", "advertiser": "zeta-shoes", "bid": 350_000})
    with pytest.raises(Conflict):
        store.put_line_item("acme", {"id": "li1", "advertiser": "zeta-shoes"})
    paused = store.put_line_item("acme", {**item, "status": "paused"}, if_updated_at=item["updated_at"])
    with pytest.raises(Conflict):
        store.put_line_item("acme", {**item, "status": "active"}, if_updated_at=item["updated_at"])
    store.put_line_item("acme", {"id": "li2", "advertiser": "acme-ads"})
    assert store.get_line_item("acme", "li1")["status"] == "paused" and paused["bid"] == 350_000
    assert [li["id"] for li in store.list_line_items("acme", "zeta-shoes")] == ["li1"]
    assert [li["id"] for li in store.list_line_items("acme")] == ["li1", "li2"]


def test_segment_membership_is_applied_read_by_user_and_erased_with_the_user(store):
    store.create_tenant("acme")
    store.apply_segment("acme", "runners", ["u1", "u2", "u3"], [], replace=True)
    store.apply_segment("acme", "vip", ["u2"], [])
    store.apply_segment("acme", "runners", ["u4"], ["u1", "nobody"])
    assert store.segment_members("acme", "runners") == ["u2", "u3", "u4"]
    assert store.user_segments("acme", "u2") == ["runners", "vip"] and store.user_segments("acme", "u1") == []
    assert store.segment_sizes("acme") == {"runners": 3, "vip": 1}
    store.apply_segment("acme", "runners", ["u9"], [], replace=True)
    assert store.segment_members("acme", "runners") == ["u9"]
    assert store.erase_user("acme", "u2")["segment_memberships"] == 1
    assert store.user_segments("acme", "u2") == [] and store.segment_sizes("acme") == {"runners": 1}
    store.drop_segment("acme", "runners")
    assert store.segment_sizes("acme") == {}



def test_served_ads_and_ghosts_are_logged_read_in_time_order_and_erased_with_the_user(store):
    store.create_tenant("acme")
    row = {"user_id": "u1", "line_item": "li", "campaign": "fall", "advertiser": "adv", "product": "p1",
           "placement": "recommendations", "ghost": False, "ts": T0 + 5, "ad_id": "ad2.x", "position": 1,
           "relevance": 0.5, "bid": 300_000, "price": 120_000}
    ghost = {**row, "user_id": "u2", "ghost": True, "ts": T0 + 1, "ad_id": None}
    store.log_ad_serves("acme", [row, ghost])
    assert store.read_ad_serves("acme") == [ghost, row]
    assert store.read_ad_serves("acme", since=T0 + 2) == [row]
    assert store.erase_user("acme", "u1")["ad_serves"] == 1
    assert [r["user_id"] for r in store.read_ad_serves("acme")] == ["u2"]


def test_webhooks_and_their_notifications_are_queued_once_and_their_attempts_logged(store):
    store.create_tenant("acme")
    made = store.put_webhook("acme", {"id": "w1", "advertiser": "adv", "url": "http://x", "secret": "s",
                                      "status": "active"})
    with pytest.raises(Conflict):
        store.put_webhook("acme", {"id": "w1", "advertiser": "adv", "url": "http://y", "secret": "s"})
    changed = store.put_webhook("acme", {**made, "status": "disabled"}, if_updated_at=made["updated_at"])
    with pytest.raises(Conflict):
        store.put_webhook("acme", {**made, "status": "active"}, if_updated_at=made["updated_at"])  # a stale read
    assert store.get_webhook("acme", "w1")["status"] == "disabled" == changed["status"]
    assert [w["id"] for w in store.list_webhooks()] == ["w1"] and store.list_webhooks("acme")[0]["tenant"] == "acme"
    event = {"webhook_id": "w1", "event_id": "e1", "type": "budget.80", "payload": {"a": 1}, "created_at": T0}
    assert store.enqueue_notifications("acme", [event, {**event, "event_id": "e2", "created_at": T0 + 5}]) == 2
    assert store.enqueue_notifications("acme", [event]) == 0  # the same event for the same webhook: once
    due = store.claim_notifications(T0 + 1, lease_s=100)
    assert [(n["event_id"], n["status"], n["payload"]) for n in due] == [("e1", "pending", {"a": 1})]
    assert store.claim_notifications(T0 + 2) == []  # claimed: nobody else takes it
    store.record_attempt("acme", "w1", "e1", {"ts": T0 + 1, "status_code": 500}, "pending", T0 + 60)
    assert [n["event_id"] for n in store.claim_notifications(T0 + 10)] == ["e2"]
    store.record_attempt("acme", "w1", "e1", {"ts": T0 + 61, "status_code": 200}, "delivered", None)
    listed = {n["event_id"]: n for n in store.list_notifications("acme", "w1")}
    assert listed["e1"]["status"] == "delivered" and [a["status_code"] for a in listed["e1"]["attempts"]] == [500, 200]
    assert [n["event_id"] for n in store.claim_notifications(T0 + 200)] == ["e2"]  # its lease ran out
    store.delete_tenant("acme")
    store.create_tenant("acme")
    assert store.list_webhooks("acme") == [] and store.claim_notifications(T0 + 10_000) == []
