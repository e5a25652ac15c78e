"""The ArangoDB adapter's own logic, without a server (none can run on our machines): schema
creation, the streamed change cursor, what the queries are sent, transactions. The adapter's
behaviour against a real server is the contract suite (tests/test_cdp_contract.py), which runs when
LODESTAR_ARANGO_URL is set."""

import re

import pytest

from lodestar.cdp import Watermark
from lodestar.cdp.arango import (
    COLLECTIONS,
    INDEXES,
    ArangoCdpStore,
    batches,
    document_key,
    init_schema,
)
from lodestar.errors import InvalidInput
from lodestar.records import parse_item


class Cursor:
    def __init__(self, docs):
        self.docs = list(docs)
        self.closed = False
        self.served = 0

    def __iter__(self):
        for doc in self.docs:
            self.served += 1
            yield doc

    def close(self, ignore_missing=False):
        self.closed = True


class Collection:
    def __init__(self, name, docs=None):
        self.name = name
        self.index_specs = []
        self.docs = docs or {}

    def indexes(self):
        return [{"type": "primary", "fields": ["_key"]}, *self.index_specs]

    def add_index(self, data):
        self.index_specs.append(data)

    def get(self, key):
        return self.docs.get(key)

    def has(self, key):
        return key in self.docs

    def insert(self, doc, overwrite=False, sync=None):
        assert overwrite or doc["_key"] not in self.docs
        self.docs[doc["_key"]] = dict(doc)

    def delete(self, key, ignore_missing=False, sync=None):
        if key not in self.docs and ignore_missing:
            return False
        del self.docs[key]
        return True


class Transaction:
    def __init__(self, db, fail_on=None):
        self.db = db
        self.fail_on = fail_on
        self.state = "running"
        self.aql = self

    def execute(self, query, bind_vars=None, **options):
        self.db.queries.append((query, bind_vars, options))
        if self.fail_on and self.fail_on in query:
            raise RuntimeError("server said no")
        return Cursor([1])

    def commit_transaction(self):
        self.state = "committed"

    def abort_transaction(self):
        self.state = "aborted"


class Database:
    """Records what the adapter asks of python-arango's StandardDatabase."""

    def __init__(self, results=None):
        self.collections = {}
        self.queries = []
        self.results = list(results or [])
        self.transactions = []
        self.aql = self
        self.fail_on = None

    def has_collection(self, name):
        return name in self.collections

    def create_collection(self, name):
        self.collections[name] = Collection(name)

    def collection(self, name):
        return self.collections.setdefault(name, Collection(name))

    def execute(self, query, bind_vars=None, **options):
        self.queries.append((query, bind_vars, options))
        return self.results.pop(0) if self.results else Cursor([])

    def begin_transaction(self, **options):
        txn = Transaction(self, self.fail_on)
        self.transactions.append((options, txn))
        return txn


def _with_tenant(db, name="acme"):
    db.collection("tenants").docs[name] = {"_key": name, "name": name, "config": {}, "created_at": 1.0,
                                           "updated_at": 1.0, "deleted": False}
    return ArangoCdpStore(db, settle_s=2.0)


def test_init_creates_what_is_missing_and_nothing_twice():
    db = Database()
    created = init_schema(db)
    assert set(db.collections) == set(COLLECTIONS)
    assert len(created) == len(COLLECTIONS) + len(INDEXES)
    changes = [ix for ix in db.collection("items").index_specs if ix["fields"] == ["tenant_id", "updated_at"]]
    assert changes and changes[0]["type"] == "persistent"
    assert all(any(ix["fields"] == ["tenant_id", "updated_at"] for ix in db.collection(c).index_specs)
               for c in ("items", "users", "events"))
    assert init_schema(db) == []


def test_changes_stream_through_one_cursor_in_batches_and_close_it():
    docs = [{"_key": f"k{n:02d}", "_id": f"items/k{n:02d}", "_rev": "r", "tenant_id": "acme", "row_hash": "h",
             "id": f"i{n}", "updated_at": 10.0} for n in range(12)]
    cursor = Cursor(docs)
    db = Database(results=[cursor])
    store = ArangoCdpStore(db, settle_s=2.0)
    pages = list(store.read_changes("acme", "items", Watermark(9.5, "k"), batch_size=5))
    assert [len(p) for p in pages] == [5, 5, 2] and cursor.closed
    assert pages[0][0] == {"_key": "k00", "id": "i0", "updated_at": 10.0}  # storage fields dropped, _key kept
    (query, bind, options), = db.queries
    assert options["stream"] is True and options["batch_size"] == 5
    assert bind == {"@collection": "items", "tenant": "acme", "since": 9.5, "key": "k", "settle": 2.0}
    assert "SORT d.updated_at, d._key" in query
    assert "d.updated_at > @since OR (d.updated_at == @since AND d._key > @key)" in query


def test_a_reader_that_stops_early_still_closes_the_server_cursor():
    cursor = Cursor([{"_key": str(n)} for n in range(100)])
    pages = batches(cursor, 10)
    next(pages)
    pages.close()
    assert cursor.closed and cursor.served == 10


def test_unknown_entity_is_refused_before_any_query():
    db = Database()
    with pytest.raises(Exception, match="entity must be one of"):
        list(ArangoCdpStore(db).read_changes("acme", "orders"))
    assert db.queries == []


def test_upserts_send_tenant_scoped_keys_and_content_hashes():
    db = Database(results=[Cursor([2]), Cursor([0])])
    store = _with_tenant(db)
    _with_tenant(db, "zeta")
    items = [parse_item({"id": "a/b?c", "title": "A"}), parse_item({"id": "2", "title": "B"})]
    assert store.upsert_items("acme", items) == 2
    assert store.upsert_items("zeta", items) == 0
    first, second = db.queries[0][1]["docs"], db.queries[1][1]["docs"]
    assert [d["_key"] for d in first] == [document_key("acme", "a/b?c"), document_key("acme", "2")]
    assert first[0]["_key"] != second[0]["_key"] and first[0]["row_hash"] == second[0]["row_hash"]
    assert all(d["tenant_id"] == "acme" for d in first) and db.queries[0][1]["@collection"] == "items"
    assert "waitForSync: true" in db.queries[0][0] and "DATE_NOW()" in db.queries[0][0]


def test_document_keys_are_valid_and_distinct():
    keys = {document_key(t, i) for t in ("a", "b") for i in ("x", "x/y", "ü ñ", "")}
    assert len(keys) == 8 and all(k.isalnum() and len(k) == 40 for k in keys)


def test_erasure_is_one_transaction_and_is_aborted_on_failure():
    db = Database()
    store = _with_tenant(db)
    assert store.erase_user("acme", "u") == {"events": 1, "preferences": 1, "served_lists": 1, "segment_memberships": 1,
                                             "ad_serves": 1}
    options, txn = db.transactions[0]
    assert txn.state == "committed" and set(options["write"]) == {
        "events", "preferences", "lodestar_served", "lodestar_segment_members", "lodestar_ad_serves", "users"}
    tombstone = db.queries[-1][1]["doc"]
    assert tombstone["deleted"] is True and tombstone["attributes"] == {} and tombstone["_key"] == document_key("acme", "u")
    db.fail_on = "UPSERT"
    with pytest.raises(RuntimeError):
        store.erase_user("acme", "u")
    assert db.transactions[-1][1].state == "aborted"


def test_the_events_per_day_count_is_one_range_query_over_the_change_index():
    db = Database(results=[Cursor([42])])
    store = _with_tenant(db)
    assert store.count_events_since("acme", 1_700_000_000.0) == 42
    query, bind, _ = db.queries[-1]
    assert bind == {"tenant": "acme", "since": 1_700_000_000.0}
    assert "e.tenant_id == @tenant AND e.updated_at >= @since" in query and "COLLECT WITH COUNT" in query
    assert ("events", ("tenant_id", "updated_at"), False) in INDEXES  # the index the range runs on


def test_a_configuration_and_its_audit_entry_are_one_transaction():
    from lodestar.cdp import audit_entry

    db = Database()
    store = _with_tenant(db)
    store.set_tenant_config("acme", {"ranking": {"content": 0.2}},
                            audit=audit_entry("key:abc", "config.set", before={}, after={"ranking": {"content": 0.2}}))
    options, txn = db.transactions[0]
    assert txn.state == "committed" and set(options["write"]) == {"tenants", "lodestar_audit"}
    (update, update_vars, _), (insert, insert_vars, _) = db.queries[-2:]
    assert "UPDATE" in update and "mergeObjects: false" in update and update_vars["config"] == {"ranking": {"content": 0.2}}
    doc = insert_vars["doc"]
    assert "INSERT" in insert and doc["tenant_id"] == "acme" and doc["action"] == "config.set"
    assert doc["_key"].startswith("acme-") and doc["seq"] in doc["_key"] and len(doc["seq"]) == 23
    db.fail_on = "INSERT"
    with pytest.raises(RuntimeError):
        store.set_tenant_config("acme", {}, audit=audit_entry("key:abc", "config.set"))
    assert db.transactions[-1][1].state == "aborted"
    store.read_audit("acme", limit=5, action_prefix="config.")
    assert db.queries[-1][1] == {"tenant": "acme", "prefix": "config.", "limit": 5}


def test_console_accounts_members_and_reports_round_trip_under_valid_keys():
    from lodestar.cdp.arango import ACCOUNTS, MEMBERS
    from lodestar.errors import UnknownTenant

    db = Database()
    store = _with_tenant(db)
    with pytest.raises(UnknownTenant, match="lodestar members add"):
        store.set_member("acme", "ann@example.com", "viewer")
    store.put_account("ann@example.com", "hash", operator=False)
    (key, doc), = db.collection(ACCOUNTS).docs.items()
    assert re.fullmatch(r"[0-9a-f]{40}", key) and doc["email"] == "ann@example.com"
    assert store.get_account("ann@example.com")["password_hash"] == "hash"
    store.set_member("acme", "ann@example.com", "editor")
    (member_key, member), = db.collection(MEMBERS).docs.items()
    assert member == {"_key": member_key, "tenant_id": "acme", "email": "ann@example.com", "role": "editor",
                      "added_at": member["added_at"]}
    assert store.remove_member("acme", "ann@example.com") and not store.remove_member("acme", "ann@example.com")
    store.put_report("acme", "activity", [{"day": "2026-11-01", "view": 3}])
    assert store.get_report("acme", "activity")["rows"] == [{"day": "2026-11-01", "view": 3}]


def test_roles_key_use_and_lookups_are_one_query_each():
    db = Database()
    store = _with_tenant(db)
    store.account_roles("ann@example.com")
    store.touch_api_keys({"k1": 5.0})
    store.touch_api_keys({})  # nothing used: no query
    store.find("acme", "users", "u1", limit=7)
    with pytest.raises(InvalidInput):
        store.find("acme", "events", "x")
    (roles, roles_bind, _), (touch, touch_bind, _), (find, find_bind, _) = db.queries
    assert "t.deleted != true" in roles and roles_bind == {"email": "ann@example.com"}
    assert "k.last_used_at < u.at" in touch and touch_bind == {"used": [{"key": "k1", "at": 5.0}]}
    assert find_bind == {"@collection": "users", "tenant": "acme", "text": "u1", "titles": False, "limit": 7}


def test_a_click_is_charged_in_one_exclusive_transaction_and_aborted_on_failure():
    from lodestar.cdp.arango import AD_CHARGES, AD_SPEND

    db = Database()
    store = _with_tenant(db)
    charge = {"ad_id": "ad1", "line_item": "li", "advertiser": "adv", "price": 1500, "product": "p", "user_id": "u",
              "day": "2026-11-22", "ts": 1.0}
    store.charge_click("acme", charge, daily_budget=10_000, total_budget=50_000)
    (options, txn), = db.transactions
    assert options["exclusive"] == [AD_CHARGES, AD_SPEND] and txn.state == "committed"
    query, bind, _ = db.queries[-1]
    assert "spent_today < @daily_budget AND spent_total < @total_budget" in query
    assert "!repeat" in query and bind["repeat_since"] is None
    assert bind["price"] == 1500 and bind["charge"]["_key"] == document_key("acme", "ad1")
    assert bind["today_key"] != bind["total_key"]
    db.fail_on = "UPSERT"
    with pytest.raises(RuntimeError):
        store.charge_click("acme", charge, daily_budget=10_000, total_budget=50_000)
    assert db.transactions[-1][1].state == "aborted"


def test_spend_of_all_line_items_and_the_line_items_stamp_are_one_query_each():
    from lodestar.cdp.arango import AD_SPEND, LINE_ITEMS

    spend = [{"line_item": "li1", "day": "2026-11-22", "spent": 700}, {"line_item": "li1", "day": "total", "spent": 900},
             {"line_item": "li2", "day": "total", "spent": 50}]
    db = Database(results=[Cursor(spend), Cursor([[2, 17.5]])])
    store = _with_tenant(db)
    assert store.ad_spend_all("acme", "2026-11-22") == {"li1": {"spent_today": 700, "spent_total": 900},
                                                        "li2": {"spent_today": 0, "spent_total": 50}}
    query, bind, _ = db.queries[-1]
    assert AD_SPEND in query and "s.day IN [@day, 'total']" in query and bind == {"tenant": "acme", "day": "2026-11-22"}
    assert store.line_items_stamp("acme") == (2, 17.5)
    query, bind, _ = db.queries[-1]
    assert LINE_ITEMS in query and "SUM(l)" in query and bind == {"tenant": "acme"}


def test_a_charge_records_the_day_on_spend_documents_and_checks_repeats_in_the_window():
    db = Database()
    store = _with_tenant(db)
    charge = {"ad_id": "ad1", "line_item": "li", "advertiser": "adv", "price": 1500, "product": "p", "user_id": "u",
              "day": "2026-11-22", "ts": 1000.0}
    store.charge_click("acme", charge, daily_budget=10_000, total_budget=50_000, repeat_window_s=600)
    query, bind, _ = db.queries[-1]
    assert '[[@today_key, @charge.day], [@total_key, "total"]]' in query
    assert "INSERT {_key: row[0], tenant_id: @tenant, line_item: @line_item, day: row[1]" in query
    assert "UPDATE {spent: OLD.spent + @price, day: row[1]}" in query
    assert bind["repeat_since"] == 400.0 and "c.ts > @repeat_since" in query and "c.user_id == @charge.user_id" in query
