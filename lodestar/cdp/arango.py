"""ArangoDB adapter of the CDP port (python-arango), for the CDP cluster shared with the customer
data platform.

Collections (``lodestar cdp init`` creates them and their indexes; existing ones are kept):

    tenants        {_key: name, name, config, created_at, updated_at, deleted}
    items, users   {_key, tenant_id, id, ..., deleted, source_updated_at, row_hash, updated_at}
    events         {_key, tenant_id, id, user_id, item_id, type, value, ts, recommendation_id, updated_at}
    preferences    {_key, tenant_id, user_id, preferences, updated_at}
    lodestar_api_keys, lodestar_served   (Lodestar's own: hashed API keys, served lists)

Every document of a tenant's entity carries ``tenant_id`` and an ``updated_at`` stamped by the
server (``DATE_NOW()``) in the writing query; a persistent index on ``[tenant_id, updated_at]``
serves incremental reads, which page by the ``(updated_at, _key)`` watermark through one streamed
cursor. ``_key`` is a hash of ``(tenant, id)``, so the same id in two tenants never collides.

A write in flight may carry a stamp older than one already committed by another writer, so change
reads only return rows stamped at least ``settle_s`` seconds ago: a watermark never passes a row
that is still being written. One AQL query is one transaction on a single server; on a cluster a
batch spanning shards is not atomic (each document is).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from arango.exceptions import DocumentInsertError

from lodestar.cdp import (
    AD_SERVE_FIELDS,
    ALL_SCOPES,
    CHARGE_FIELDS,
    ENTITIES,
    SERVED_FIELDS,
    StoredKey,
    Watermark,
    check_entity,
    check_tenant_name,
    erased_user,
    require_tenant,
    row_hash,
    stored_scopes,
    stored_values,
    unknown_account,
)
from lodestar.errors import Conflict, InvalidInput
from lodestar.records import EVENT_FIELDS, ITEM_FIELDS, USER_FIELDS

TENANTS = "tenants"
PREFERENCES = "preferences"
API_KEYS = "lodestar_api_keys"
SERVED = "lodestar_served"
AUDIT = "lodestar_audit"
ACCOUNTS = "lodestar_accounts"
MEMBERS = "lodestar_members"
REPORTS = "lodestar_reports"
EXPERIMENTS = "lodestar_experiments"
AD_CHARGES = "lodestar_ad_charges"
AD_SPEND = "lodestar_ad_spend"
ADVERTISERS = "lodestar_advertisers"
LINE_ITEMS = "lodestar_line_items"
SEGMENT_MEMBERS = "lodestar_segment_members"
AD_SERVES = "lodestar_ad_serves"
WEBHOOKS = "lodestar_webhooks"
NOTIFICATIONS = "lodestar_notifications"
COLLECTIONS = (TENANTS, *ENTITIES, PREFERENCES, API_KEYS, SERVED, AUDIT, ACCOUNTS, MEMBERS, REPORTS, EXPERIMENTS,
               AD_CHARGES, AD_SPEND, ADVERTISERS, LINE_ITEMS, SEGMENT_MEMBERS, AD_SERVES, WEBHOOKS, NOTIFICATIONS)

# (collection, fields, unique): what `lodestar cdp init` creates.
INDEXES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("items", ("tenant_id", "updated_at"), False),
    ("users", ("tenant_id", "updated_at"), False),
    ("events", ("tenant_id", "updated_at"), False),
    ("events", ("tenant_id", "user_id", "ts"), False),
    ("events", ("tenant_id", "user_id", "updated_at"), False),  # user_events_mark, from the index alone
    (PREFERENCES, ("tenant_id", "updated_at"), False),
    (API_KEYS, ("tenant_id",), False),
    (AUDIT, ("tenant_id", "seq"), False),
    (SERVED, ("tenant_id", "ts"), False),
    (SERVED, ("tenant_id", "user_id"), False),
    (MEMBERS, ("tenant_id",), False),
    (MEMBERS, ("email",), False),
    (EXPERIMENTS, ("tenant_id",), False),
    (AD_CHARGES, ("tenant_id", "line_item", "ts"), False),
    (AD_CHARGES, ("tenant_id", "line_item", "user_id", "ts"), False),
    (AD_SPEND, ("tenant_id", "day"), False),
    (ADVERTISERS, ("tenant_id",), False),
    (LINE_ITEMS, ("tenant_id", "advertiser"), False),
    (SEGMENT_MEMBERS, ("tenant_id", "user_id"), False),
    (SEGMENT_MEMBERS, ("tenant_id", "segment"), False),
    (AD_SERVES, ("tenant_id", "ts"), False),
    (AD_SERVES, ("tenant_id", "user_id"), False),
    (WEBHOOKS, ("tenant_id",), False),
    (NOTIFICATIONS, ("status", "next_attempt_at"), False),
    (NOTIFICATIONS, ("tenant_id", "webhook_id", "created_at"), False),
)

_HIDDEN = ("_id", "_rev", "tenant_id", "row_hash")

# Stamps come from the server clock, taken once per query.
SET_CONFIG_AQL = f"""
FOR t IN {TENANTS}
    FILTER t._key == @key AND (@expected == null OR t.updated_at == @expected)
    UPDATE t WITH {{config: @config, updated_at: @now}} IN {TENANTS} OPTIONS {{mergeObjects: false}}
    RETURN NEW._key
"""
INSERT_AUDIT_AQL = f"INSERT @doc INTO {AUDIT}"
AUDIT_AQL = f"""
FOR d IN {AUDIT}
    FILTER d.tenant_id == @tenant AND LEFT(d.action, LENGTH(@prefix)) == @prefix
    SORT d.tenant_id DESC, d.seq DESC
    LIMIT @limit
    RETURN d
"""

UPSERT_AQL = """
LET stamp = DATE_NOW() / 1000
FOR d IN @docs
  UPSERT { _key: d._key }
  INSERT MERGE(d, { updated_at: stamp })
  UPDATE (OLD.row_hash != d.row_hash AND (d.source_updated_at == null OR OLD.source_updated_at == null
          OR d.source_updated_at >= OLD.source_updated_at)) ? MERGE(d, { updated_at: stamp }) : {}
  IN @@collection OPTIONS { waitForSync: true }
  FILTER OLD == null OR NEW.updated_at == stamp
  COLLECT WITH COUNT INTO changed
  RETURN changed
"""

INSERT_NEW_AQL = """
LET stamp = DATE_NOW() / 1000
FOR d IN @docs
  INSERT MERGE(d, { updated_at: stamp }) INTO @@collection OPTIONS { ignoreErrors: true, waitForSync: true }
  RETURN NEW._key
"""

CHANGES_AQL = """
FOR d IN @@collection
  FILTER d.tenant_id == @tenant
  FILTER d.updated_at > @since OR (d.updated_at == @since AND d._key > @key)
  FILTER d.updated_at <= DATE_NOW() / 1000 - @settle
  SORT d.updated_at, d._key
  RETURN d
"""

LATEST_AQL = """
FOR d IN @@collection
  FILTER d.tenant_id == @tenant AND d.updated_at <= DATE_NOW() / 1000 - @settle
  SORT d.updated_at DESC, d._key DESC
  LIMIT 1
  RETURN { updated_at: d.updated_at, key: d._key }
"""

# Every live tenant's newest (updated_at, _key), in one query: per tenant, two seeks in the
# [tenant_id, updated_at] index (the newest settled stamp, then the greatest _key at that stamp).
# A COLLECT over the collection would read every document on every sensor tick.
LATEST_ALL_AQL = f"""
LET cut = DATE_NOW() / 1000 - @settle
FOR t IN {TENANTS}
  FILTER t.deleted != true
  LET newest = FIRST(
    FOR d IN @@collection
      FILTER d.tenant_id == t._key AND d.updated_at <= cut
      SORT d.updated_at DESC
      LIMIT 1
      RETURN d.updated_at)
  FILTER newest != null
  LET key = FIRST(
    FOR d IN @@collection
      FILTER d.tenant_id == t._key AND d.updated_at == newest
      SORT d._key DESC
      LIMIT 1
      RETURN d._key)
  RETURN {{ tenant: t._key, updated_at: newest, key: key }}
"""

USER_EVENTS_MARK_AQL = """
FOR e IN events
  FILTER e.tenant_id == @tenant AND e.user_id == @user
  COLLECT AGGREGATE n = COUNT(1), latest = MAX(e.updated_at)
  RETURN [n, latest]
"""

USER_EVENTS_AQL = """
FOR e IN events
  FILTER e.tenant_id == @tenant AND e.user_id == @user
  SORT e.ts DESC
  LIMIT @limit
  RETURN e
"""

USER_EVENTS_WRITTEN_AFTER_AQL = """
FOR e IN events
  FILTER e.tenant_id == @tenant AND e.user_id == @user AND e.updated_at > @after
  SORT e.ts DESC
  LIMIT @limit
  RETURN e
"""

ERASE_AQL = {
    "events": "FOR e IN events FILTER e.tenant_id == @tenant AND e.user_id == @user REMOVE e IN events "
              "COLLECT WITH COUNT INTO n RETURN n",
    "preferences": f"FOR p IN {PREFERENCES} FILTER p.tenant_id == @tenant AND p.user_id == @user "
                   f"REMOVE p IN {PREFERENCES} COLLECT WITH COUNT INTO n RETURN n",
    "served_lists": f"FOR s IN {SERVED} FILTER s.tenant_id == @tenant AND s.user_id == @user "
                    f"REMOVE s IN {SERVED} COLLECT WITH COUNT INTO n RETURN n",
    "segment_memberships": f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant AND m.user_id == @user "
                           f"REMOVE m IN {SEGMENT_MEMBERS} COLLECT WITH COUNT INTO n RETURN n",
    "ad_serves": f"FOR a IN {AD_SERVES} FILTER a.tenant_id == @tenant AND a.user_id == @user "
                 f"REMOVE a IN {AD_SERVES} COLLECT WITH COUNT INTO n RETURN n",
}

TOMBSTONE_AQL = """
LET stamp = DATE_NOW() / 1000
UPSERT { _key: @doc._key }
INSERT MERGE(@doc, { updated_at: stamp })
REPLACE MERGE(@doc, { updated_at: stamp })
IN users OPTIONS { waitForSync: true }
RETURN 1
"""

COUNT_AQL = """
FOR d IN @@collection
  FILTER d.tenant_id == @tenant AND (@with_deleted OR d.deleted != true)
  COLLECT WITH COUNT INTO n
  RETURN n
"""

# A range over the (tenant_id, updated_at) index.
COUNT_SINCE_AQL = """
FOR e IN events
  FILTER e.tenant_id == @tenant AND e.updated_at >= @since
  COLLECT WITH COUNT INTO n
  RETURN n
"""

TOUCH_KEYS_AQL = f"""
FOR u IN @used
  LET k = DOCUMENT({API_KEYS}, u.key)
  FILTER k != null AND (k.last_used_at == null OR k.last_used_at < u.at)
  UPDATE k WITH {{last_used_at: u.at}} IN {API_KEYS}
"""

MEMBERS_AQL = f"FOR m IN {MEMBERS} FILTER m.tenant_id == @tenant SORT m.email RETURN m"
ROLES_AQL = f"""
FOR m IN {MEMBERS}
  FILTER m.email == @email
  LET t = DOCUMENT({TENANTS}, m.tenant_id)
  FILTER t != null AND t.deleted != true
  SORT m.tenant_id
  RETURN m
"""

# Ids by prefix over the primary index's key order would need a per-tenant key prefix; these scan
# the tenant's documents (the console's lookups, not a request path).
FIND_AQL = """
FOR d IN @@collection
  FILTER d.tenant_id == @tenant AND d.deleted != true
  FILTER STARTS_WITH(LOWER(d.id), LOWER(@text)) OR (@titles AND CONTAINS(LOWER(d.title), LOWER(@text)))
  SORT d.id
  LIMIT @limit
  RETURN d
"""

UPDATE_EXPERIMENT_AQL = f"""
FOR e IN {EXPERIMENTS}
    FILTER e._key == @key AND e.record.updated_at == @expected
    UPDATE e WITH {{record: @record}} IN {EXPERIMENTS} OPTIONS {{mergeObjects: false, waitForSync: true}}
    RETURN NEW._key
"""

# One click's charge, read and written inside a stream transaction that holds both collections
# exclusively: the spend it checks is the spend it adds to, in every process.
CHARGE_AQL = f"""
LET today = DOCUMENT({AD_SPEND}, @today_key)
LET total = DOCUMENT({AD_SPEND}, @total_key)
LET spent_today = today == null ? 0 : today.spent
LET spent_total = total == null ? 0 : total.spent
LET duplicate = DOCUMENT({AD_CHARGES}, @charge._key) != null
LET repeat = @repeat_since == null ? false : LENGTH(
    FOR c IN {AD_CHARGES}
        FILTER c.tenant_id == @tenant AND c.line_item == @line_item AND c.user_id == @charge.user_id
            AND c.product == @charge.product AND c.ts > @repeat_since
        LIMIT 1 RETURN 1) > 0
LET within = spent_today < @daily_budget AND spent_total < @total_budget
LET ok = !duplicate AND !repeat AND within
LET charged = (FOR c IN (ok ? [@charge] : []) INSERT c INTO {AD_CHARGES} RETURN 1)
LET added = (FOR row IN (ok ? [[@today_key, @charge.day], [@total_key, "total"]] : [])
    UPSERT {{_key: row[0]}} INSERT {{_key: row[0], tenant_id: @tenant, line_item: @line_item, day: row[1], spent: @price}}
    UPDATE {{spent: OLD.spent + @price, day: row[1]}} IN {AD_SPEND} RETURN 1)
RETURN {{charged: ok, reason: duplicate ? "already charged" : (repeat ? "repeat click within the click window"
        : (ok ? null : "budget spent")),
        spent_today: spent_today + (ok ? @price : 0), spent_total: spent_total + (ok ? @price : 0)}}
"""

UPDATE_LINE_ITEM_AQL = f"""
FOR l IN {LINE_ITEMS}
    FILTER l._key == @key AND l.record.updated_at == @expected
    UPDATE l WITH {{record: @record}} IN {LINE_ITEMS} OPTIONS {{mergeObjects: false, waitForSync: true}}
    RETURN NEW._key
"""

SERVED_AQL = f"""
FOR s IN {SERVED}
  FILTER s.tenant_id == @tenant AND s.ts >= @since
  SORT s.ts
  RETURN s
"""


def document_key(tenant: str, ident: str) -> str:
    """A valid, collision-free ``_key`` for an entity id of a tenant (ids may hold any character)."""
    return hashlib.sha1(f"{tenant}\x00{ident}".encode()).hexdigest()


def email_key(email: str) -> str:
    """An account's document key: its address's digest (an address may hold characters keys may not)."""
    return document_key("", email)


def batches(cursor: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Group a streamed cursor's documents into lists of ``size``; the cursor is closed when the
    reader stops early (a server-side streaming cursor holds resources until it is)."""
    batch: list[dict[str, Any]] = []
    try:
        for doc in cursor:
            batch.append(doc)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        close = getattr(cursor, "close", None)
        if close is not None:
            try:
                close(ignore_missing=True)
            except TypeError:
                close()


def decode(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the port's row: the tenant and storage fields dropped, ``_key`` kept as
    the watermark's tie-break."""
    return {k: v for k, v in doc.items() if k not in _HIDDEN}


def connect(url: str, database: str, username: str, password: str, create: bool = False):
    """A python-arango database handle; with ``create``, the database is created when missing."""
    from arango import ArangoClient

    client = ArangoClient(hosts=url)
    if create:
        system = client.db("_system", username=username, password=password, verify=True)
        if not system.has_database(database):
            system.create_database(database)
    return client.db(database, username=username, password=password, verify=True)


def init_schema(db) -> list[str]:
    """Create the collections and indexes that are missing; return what was created."""
    created = []
    for name in COLLECTIONS:
        if not db.has_collection(name):
            db.create_collection(name)
            created.append(f"collection {name}")
    for collection, fields, unique in INDEXES:
        existing = {tuple(ix.get("fields", ())) for ix in db.collection(collection).indexes()}
        if fields not in existing:
            db.collection(collection).add_index(
                {"type": "persistent", "fields": list(fields), "unique": unique, "sparse": False,
                 "name": f"lodestar_{collection}_{'_'.join(fields)}"}
            )
            created.append(f"index {collection}[{', '.join(fields)}]")
    return created


class ArangoCdpStore:
    """The CDP port over an ArangoDB database (``db``: a python-arango ``StandardDatabase``)."""

    def __init__(self, db, settle_s: float = 2.0, batch_size: int = 5000) -> None:
        self.db = db
        self.settle_s = settle_s
        self.batch_size = batch_size

    def _query(self, query: str, **bind: Any) -> list[Any]:
        return list(self.db.aql.execute(query, bind_vars=bind))

    def close(self) -> None:
        pass

    # -- tenants -----------------------------------------------------------------------------
    def _tenant_doc(self, name: str) -> dict[str, Any] | None:
        return self.db.collection(TENANTS).get(name)

    def create_tenant(self, name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        check_tenant_name(name)
        existing = self._tenant_doc(name)
        if existing is not None and not existing.get("deleted"):
            raise Conflict(f"tenant {name!r} already exists; pick another name or use it as it is")
        now = time.time()
        doc = {"_key": name, "name": name, "config": config or {}, "created_at": now, "updated_at": now,
               "deleted": False}
        self.db.collection(TENANTS).insert(doc, overwrite=True)
        return self.get_tenant(name)  # type: ignore[return-value]

    def get_tenant(self, name: str) -> dict[str, Any] | None:
        doc = self._tenant_doc(name)
        return None if doc is None or doc.get("deleted") else self._tenant(doc)

    def list_tenants(self) -> list[dict[str, Any]]:
        docs = self._query("FOR t IN tenants FILTER t.deleted != true SORT t.name RETURN t")
        return [self._tenant(d) for d in docs]

    def set_tenant_config(self, name: str, config: dict[str, Any], audit: dict[str, Any] | None = None,
                          if_updated_at: float | None = None) -> None:
        """The configuration and its audit entry in one stream transaction."""
        require_tenant(self, name)
        txn = self.db.begin_transaction(write=[TENANTS, AUDIT], sync=True)
        try:
            updated = list(txn.aql.execute(SET_CONFIG_AQL, bind_vars={"key": name, "config": config, "now": time.time(),
                                                                      "expected": if_updated_at}))
            if not updated:
                raise Conflict(f"tenant {name!r}'s configuration changed meanwhile; read it again and retry")
            if audit is not None:
                txn.aql.execute(INSERT_AUDIT_AQL, bind_vars={"doc": self._audit_doc(name, audit)})
            txn.commit_transaction()
        except BaseException:
            txn.abort_transaction()
            raise

    # -- audit log ---------------------------------------------------------------------------
    @staticmethod
    def _audit_doc(tenant: str, entry: dict[str, Any]) -> dict[str, Any]:
        # seq orders entries (newest first) and names them: nanoseconds, plus a random tail so that
        # two servers writing in the same nanosecond never collide.
        seq = f"{time.time_ns():020d}{secrets.randbelow(1000):03d}"
        return {"_key": f"{tenant}-{seq}", "tenant_id": tenant, "seq": seq, "at": entry["at"],
                "actor": entry["actor"], "action": entry["action"], "target": entry.get("target", ""),
                "before": entry.get("before"), "after": entry.get("after")}

    def append_audit(self, tenant: str, entry: dict[str, Any]) -> None:
        self.db.collection(AUDIT).insert(self._audit_doc(tenant, entry), sync=True)

    def read_audit(self, tenant: str, limit: int = 100, action_prefix: str = "") -> list[dict[str, Any]]:
        docs = self._query(AUDIT_AQL, tenant=tenant, prefix=action_prefix, limit=limit)
        return [{"id": d["seq"], **{f: d.get(f) for f in ("at", "actor", "action", "target", "before", "after")}}
                for d in docs]

    @staticmethod
    def _tenant(doc: dict[str, Any]) -> dict[str, Any]:
        return {"name": doc["name"], "config": doc.get("config") or {}, "created_at": doc["created_at"],
                "updated_at": doc["updated_at"]}

    def delete_tenant(self, name: str) -> None:
        require_tenant(self, name)
        self.db.collection(TENANTS).update({"_key": name, "deleted": True, "updated_at": time.time()})
        # Advertisers and line items stay, with the spend ledger that names them.
        for collection in (MEMBERS, REPORTS, EXPERIMENTS, SEGMENT_MEMBERS, AD_SERVES, WEBHOOKS,
                           NOTIFICATIONS):  # a tenant made later under the same name starts with none
            self._query(f"FOR d IN {collection} FILTER d.tenant_id == @tenant REMOVE d IN {collection}", tenant=name)

    # -- API keys ----------------------------------------------------------------------------
    def add_api_key(self, tenant: str, key_id: str, key_hash: str, scopes: tuple[str, ...] = ALL_SCOPES,
                    label: str = "", advertiser: str | None = None) -> None:
        require_tenant(self, tenant)
        self.db.collection(API_KEYS).insert(
            {"_key": key_id, "tenant_id": tenant, "key_hash": key_hash, "created_at": time.time(),
             "scopes": ",".join(scopes), "label": label, "revoked_at": None, "advertiser": advertiser}, sync=True)

    def find_api_key(self, key_id: str) -> StoredKey | None:
        doc = self.db.collection(API_KEYS).get(key_id)
        if doc is None or doc.get("revoked_at") is not None or self.get_tenant(doc["tenant_id"]) is None:
            return None
        if doc.get("advertiser"):  # an advertiser's key carries no scope
            return StoredKey(doc["tenant_id"], doc["key_hash"], (), doc["advertiser"])
        return StoredKey(doc["tenant_id"], doc["key_hash"], stored_scopes(doc.get("scopes")))

    def list_api_keys(self, tenant: str) -> list[dict[str, Any]]:
        docs = self._query(f"FOR k IN {API_KEYS} FILTER k.tenant_id == @tenant SORT k.created_at RETURN k", tenant=tenant)
        return [{"key_id": d["_key"], "scopes": list(stored_scopes(d.get("scopes"))), "label": d.get("label") or "",
                 "created_at": d["created_at"], "revoked_at": d.get("revoked_at"),
                 "last_used_at": d.get("last_used_at")} for d in docs]

    def revoke_api_key(self, tenant: str, key_id: str) -> bool:
        doc = self.db.collection(API_KEYS).get(key_id)
        if doc is None or doc["tenant_id"] != tenant:
            return False
        if doc.get("revoked_at") is None:
            self.db.collection(API_KEYS).update({"_key": key_id, "revoked_at": time.time()}, sync=True)
        return True

    def touch_api_keys(self, used: dict[str, float]) -> None:
        if used:
            self._query(TOUCH_KEYS_AQL, used=[{"key": k, "at": at} for k, at in used.items()])

    # -- console accounts and memberships ----------------------------------------------------
    def put_account(self, email: str, password_hash: str, operator: bool = False) -> None:
        existing = self.db.collection(ACCOUNTS).get(email_key(email))
        self.db.collection(ACCOUNTS).insert(
            {"_key": email_key(email), "email": email, "password_hash": password_hash, "operator": bool(operator),
             "created_at": existing["created_at"] if existing else time.time(), "failed_signins": 0,
             "last_failed_at": None}, overwrite=True, sync=True)

    def get_account(self, email: str) -> dict[str, Any] | None:
        doc = self.db.collection(ACCOUNTS).get(email_key(email))
        return None if doc is None else {f: doc.get(f) for f in ("email", "password_hash", "operator", "created_at",
                                                                  "failed_signins", "last_failed_at")}

    def list_accounts(self) -> list[dict[str, Any]]:
        docs = self._query(f"FOR a IN {ACCOUNTS} SORT a.email RETURN a")
        return [{"email": d["email"], "operator": bool(d.get("operator")), "created_at": d["created_at"]} for d in docs]

    def record_signin(self, email: str, succeeded: bool) -> None:
        key = email_key(email)
        if succeeded:
            self._query(f"FOR a IN {ACCOUNTS} FILTER a._key == @key "
                        f"UPDATE a WITH {{failed_signins: 0, last_failed_at: null}} IN {ACCOUNTS}", key=key)
        else:
            self._query(f"FOR a IN {ACCOUNTS} FILTER a._key == @key UPDATE a WITH "
                        f"{{failed_signins: a.failed_signins + 1, last_failed_at: @now}} IN {ACCOUNTS}",
                        key=key, now=time.time())

    def set_member(self, tenant: str, email: str, role: str) -> None:
        require_tenant(self, tenant)
        if self.db.collection(ACCOUNTS).get(email_key(email)) is None:
            raise unknown_account(email)
        key = document_key(tenant, email_key(email))
        existing = self.db.collection(MEMBERS).get(key)
        self.db.collection(MEMBERS).insert(
            {"_key": key, "tenant_id": tenant, "email": email, "role": role,
             "added_at": existing["added_at"] if existing else time.time()}, overwrite=True, sync=True)

    def remove_member(self, tenant: str, email: str) -> bool:
        return bool(self.db.collection(MEMBERS).delete(document_key(tenant, email_key(email)), ignore_missing=True,
                                                       sync=True))

    def list_members(self, tenant: str) -> list[dict[str, Any]]:
        return [{"email": d["email"], "role": d["role"], "added_at": d["added_at"]}
                for d in self._query(MEMBERS_AQL, tenant=tenant)]

    def account_roles(self, email: str) -> dict[str, str]:
        return {d["tenant_id"]: d["role"] for d in self._query(ROLES_AQL, email=email)}

    # -- reports -----------------------------------------------------------------------------
    def put_report(self, tenant: str, name: str, rows: list[dict[str, Any]]) -> None:
        self.db.collection(REPORTS).insert({"_key": document_key(tenant, name), "tenant_id": tenant, "name": name,
                                            "rows": rows, "updated_at": time.time()}, overwrite=True, sync=True)

    def get_report(self, tenant: str, name: str) -> dict[str, Any] | None:
        doc = self.db.collection(REPORTS).get(document_key(tenant, name))
        return None if doc is None else {"rows": doc["rows"], "updated_at": doc["updated_at"]}

    # -- items, users, events ----------------------------------------------------------------
    @staticmethod
    def _doc(tenant: str, record: dict[str, Any], fields: tuple[str, ...], **extra: Any) -> dict[str, Any]:
        """A record as the document stored for a tenant (``extra``: more fields, such as its row hash)."""
        return {**stored_values(record, fields), "_key": document_key(tenant, record["id"]), "tenant_id": tenant,
                **extra}

    def _upsert(self, collection: str, fields: tuple[str, ...], tenant: str, records: list[dict[str, Any]]) -> int:
        if not records:
            return 0
        require_tenant(self, tenant)
        docs = [self._doc(tenant, r, fields, row_hash=row_hash(r, fields)) for r in records]
        result = self._query(UPSERT_AQL, docs=docs, **{"@collection": collection})
        return int(result[0]) if result else 0

    def upsert_items(self, tenant: str, items: list[dict[str, Any]]) -> int:
        return self._upsert("items", ITEM_FIELDS, tenant, items)

    def upsert_users(self, tenant: str, users: list[dict[str, Any]]) -> int:
        return self._upsert("users", USER_FIELDS, tenant, users)

    def append_events(self, tenant: str, events: list[dict[str, Any]]) -> int:
        """Store events; one already stored (same id) is ignored. Returns how many were new."""
        if not events:
            return 0
        require_tenant(self, tenant)
        docs = [self._doc(tenant, e, EVENT_FIELDS) for e in events]
        # Duplicates fail the unique _key and are skipped (ignoreErrors); only stored ones return a key.
        return sum(1 for key in self._query(INSERT_NEW_AQL, docs=docs, **{"@collection": "events"}) if key)

    def user_events(self, tenant: str, user_id: str, limit: int = 500) -> list[dict[str, Any]]:
        docs = self._query(USER_EVENTS_AQL, tenant=tenant, user=user_id, limit=limit)
        return [{f: d.get(f) for f in EVENT_FIELDS} for d in docs]

    def user_events_written_after(
        self, tenant: str, user_id: str, written_after: float, limit: int = 500,
    ) -> list[dict[str, Any]]:
        docs = self._query(USER_EVENTS_WRITTEN_AFTER_AQL, tenant=tenant, user=user_id, after=written_after, limit=limit)
        return [{f: d.get(f) for f in EVENT_FIELDS} for d in docs]

    def user_events_mark(self, tenant: str, user_id: str) -> tuple[int, float | None]:
        rows = self._query(USER_EVENTS_MARK_AQL, tenant=tenant, user=user_id)
        count, latest = rows[0] if rows else (0, None)  # an aggregate of no documents is one row, or none
        return int(count), latest

    # -- change streams ----------------------------------------------------------------------
    def read_changes(
        self, tenant: str, entity: str, since: Watermark | None = None, batch_size: int = 5000
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows changed after ``since`` in ``(updated_at, _key)`` order, from one streamed cursor
        fetched ``batch_size`` documents per round trip."""
        check_entity(entity)
        mark = since or Watermark(-1.0, "")
        cursor = self.db.aql.execute(
            CHANGES_AQL,
            bind_vars={"@collection": entity, "tenant": tenant, "since": mark.updated_at, "key": mark.id,
                       "settle": self.settle_s},
            batch_size=batch_size, stream=True, ttl=600,
        )
        for batch in batches(cursor, batch_size):
            yield [decode(d) for d in batch]

    def latest_watermark(self, tenant: str, entity: str) -> Watermark | None:
        check_entity(entity)
        rows = self._query(LATEST_AQL, tenant=tenant, settle=self.settle_s, **{"@collection": entity})
        return Watermark(rows[0]["updated_at"], rows[0]["key"]) if rows else None

    def latest_watermarks(self, entity: str) -> dict[str, Watermark]:
        """Every live tenant's :meth:`latest_watermark` of an entity, in one AQL query (settled rows
        only, as there)."""
        check_entity(entity)
        rows = self._query(LATEST_ALL_AQL, settle=self.settle_s, **{"@collection": entity})
        return {r["tenant"]: Watermark(r["updated_at"], r["key"]) for r in rows}

    def erase_user(self, tenant: str, user_id: str) -> dict[str, int]:
        """Events, preferences and served lists deleted and the profile replaced by a tombstone, in
        one stream transaction."""
        require_tenant(self, tenant)
        txn = self.db.begin_transaction(write=["events", PREFERENCES, SERVED, SEGMENT_MEMBERS, AD_SERVES, "users"], sync=True)
        try:
            counts = {name: int(next(iter(txn.aql.execute(query, bind_vars={"tenant": tenant, "user": user_id})), 0))
                      for name, query in ERASE_AQL.items()}
            tombstone, digest = erased_user(user_id)
            doc = self._doc(tenant, tombstone, USER_FIELDS, row_hash=digest)
            txn.aql.execute(TOMBSTONE_AQL, bind_vars={"doc": doc})
            txn.commit_transaction()
        except BaseException:
            txn.abort_transaction()
            raise
        return counts

    def count(self, tenant: str, entity: str) -> int:
        check_entity(entity)
        rows = self._query(COUNT_AQL, tenant=tenant, with_deleted=entity == "events", **{"@collection": entity})
        return int(rows[0]) if rows else 0

    def count_events_since(self, tenant: str, since: float) -> int:
        rows = self._query(COUNT_SINCE_AQL, tenant=tenant, since=since)
        return int(rows[0]) if rows else 0

    def _get(self, collection: str, tenant: str, ident: str) -> dict[str, Any] | None:
        doc = self.db.collection(collection).get(document_key(tenant, ident))
        if doc is None or doc.get("deleted"):
            return None
        out = decode(doc)
        out.pop("_key", None)
        return out

    def get_item(self, tenant: str, item_id: str) -> dict[str, Any] | None:
        return self._get("items", tenant, item_id)

    def deleted_ids(self, tenant: str, entity: str, ids: list[str]) -> set[str]:
        if entity not in ("items", "users"):
            raise InvalidInput(f"deleted_ids looks up items or users, not {entity!r}")
        out: set[str] = set()
        collection = self.db.collection(entity)
        for start in range(0, len(ids), 500):
            keys = [document_key(tenant, i) for i in ids[start:start + 500]]
            out.update(doc["id"] for doc in collection.get_many(keys) if doc.get("deleted"))
        return out

    def find(self, tenant: str, entity: str, text: str, limit: int = 50) -> list[dict[str, Any]]:
        if entity not in ("items", "users"):
            raise InvalidInput(f"find looks up items or users, not {entity!r}")
        docs = self._query(FIND_AQL, **{"@collection": entity}, tenant=tenant, text=text, titles=entity == "items",
                           limit=limit)
        return [{k: v for k, v in decode(d).items() if k != "_key"} for d in docs]

    def get_user(self, tenant: str, user_id: str) -> dict[str, Any] | None:
        return self._get("users", tenant, user_id)

    # -- served lists ------------------------------------------------------------------------
    def log_served(self, tenant: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        docs = [{"_key": document_key(tenant, r["recommendation_id"]), "tenant_id": tenant,
                 "recommendation_id": r["recommendation_id"], "user_id": r.get("user_id"), "endpoint": r["endpoint"],
                 "strategy": r["strategy"], "items": list(r["items"]), "ts": r["ts"], "unit_id": r.get("unit_id"),
                 "experiments": r.get("experiments") or []} for r in rows]
        self.db.collection(SERVED).insert_many(docs, overwrite_mode="ignore", silent=True)

    def read_served(self, tenant: str, since: float = 0.0) -> list[dict[str, Any]]:
        docs = self._query(SERVED_AQL, tenant=tenant, since=since)
        return [{**{f: d.get(f) for f in SERVED_FIELDS}, "experiments": d.get("experiments") or []} for d in docs]

    # -- advertisers and line items ----------------------------------------------------------
    def create_advertiser(self, tenant: str, advertiser: dict[str, Any]) -> dict[str, Any]:
        require_tenant(self, tenant)
        record = {"id": advertiser["id"], "name": advertiser["name"], "created_at": time.time()}
        try:
            self.db.collection(ADVERTISERS).insert({"_key": document_key(tenant, record["id"]), "tenant_id": tenant,
                                                    **record}, sync=True)
        except DocumentInsertError:
            raise Conflict(f"tenant {tenant!r} already has an advertiser {record['id']!r}; pick another name") from None
        return record

    def get_advertiser(self, tenant: str, advertiser_id: str) -> dict[str, Any] | None:
        doc = self.db.collection(ADVERTISERS).get(document_key(tenant, advertiser_id))
        return None if doc is None else {f: doc[f] for f in ("id", "name", "created_at")}

    def list_advertisers(self, tenant: str) -> list[dict[str, Any]]:
        docs = self._query(f"FOR a IN {ADVERTISERS} FILTER a.tenant_id == @tenant SORT a.id RETURN a", tenant=tenant)
        return [{f: d[f] for f in ("id", "name", "created_at")} for d in docs]

    def put_line_item(self, tenant: str, record: dict[str, Any], if_updated_at: float | None = None) -> dict[str, Any]:
        require_tenant(self, tenant)
        stored = {**record, "updated_at": time.time()}
        key = document_key(tenant, record["id"])
        if if_updated_at is None:
            try:
                self.db.collection(LINE_ITEMS).insert({"_key": key, "tenant_id": tenant, "advertiser": record["advertiser"],
                                                       "record": stored}, sync=True)
            except DocumentInsertError:
                raise Conflict(f"tenant {tenant!r} already has a line item {record['id']!r}; pick another id") from None
        elif not self._query(UPDATE_LINE_ITEM_AQL, key=key, record=stored, expected=if_updated_at):
            raise Conflict(f"line item {record['id']!r} changed meanwhile (or does not exist); read it again")
        return stored

    def get_line_item(self, tenant: str, line_item_id: str) -> dict[str, Any] | None:
        doc = self.db.collection(LINE_ITEMS).get(document_key(tenant, line_item_id))
        return None if doc is None else doc["record"]

    def list_line_items(self, tenant: str, advertiser: str | None = None) -> list[dict[str, Any]]:
        return [d["record"] for d in self._query(
            f"FOR l IN {LINE_ITEMS} FILTER l.tenant_id == @tenant AND (@advertiser == null OR l.advertiser == @advertiser) "
            "SORT l.record.id RETURN l", tenant=tenant, advertiser=advertiser)]

    # -- the ad spend ledger -----------------------------------------------------------------
    def charge_click(self, tenant: str, charge: dict[str, Any], daily_budget: int, total_budget: int,
                     repeat_window_s: float = 0.0) -> dict[str, Any]:
        line_item = charge["line_item"]
        doc = {"_key": document_key(tenant, charge["ad_id"]), "tenant_id": tenant, **charge, "price": int(charge["price"])}
        txn = self.db.begin_transaction(exclusive=[AD_CHARGES, AD_SPEND], sync=True)
        try:
            (result,) = list(txn.aql.execute(CHARGE_AQL, bind_vars={
                "today_key": document_key(tenant, f"{line_item}\x00{charge['day']}"),
                "total_key": document_key(tenant, f"{line_item}\x00total"), "charge": doc, "tenant": tenant,
                "line_item": line_item, "price": int(charge["price"]), "daily_budget": daily_budget,
                "total_budget": total_budget,
                "repeat_since": charge["ts"] - repeat_window_s if repeat_window_s > 0 else None}))
            txn.commit_transaction()
        except BaseException:
            txn.abort_transaction()
            raise
        return result

    def ad_spend(self, tenant: str, line_item: str, day: str) -> dict[str, int]:
        spend = self.db.collection(AD_SPEND)
        today = spend.get(document_key(tenant, f"{line_item}\x00{day}"))
        total = spend.get(document_key(tenant, f"{line_item}\x00total"))
        return {"spent_today": today["spent"] if today else 0, "spent_total": total["spent"] if total else 0}

    def ad_spend_all(self, tenant: str, day: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for doc in self._query(f"FOR s IN {AD_SPEND} FILTER s.tenant_id == @tenant AND s.day IN [@day, 'total'] "
                               "RETURN s", tenant=tenant, day=day):
            row = out.setdefault(doc["line_item"], {"spent_today": 0, "spent_total": 0})
            row["spent_today" if doc["day"] == day else "spent_total"] = doc["spent"]
        return out

    def line_items_stamp(self, tenant: str) -> tuple[int, float]:
        (found,) = self._query(f"LET l = (FOR x IN {LINE_ITEMS} FILTER x.tenant_id == @tenant "
                               "RETURN x.record.updated_at) RETURN [LENGTH(l), SUM(l)]", tenant=tenant)
        return int(found[0]), float(found[1] or 0.0)

    def ad_charges(self, tenant: str, line_item: str | None = None) -> list[dict[str, Any]]:
        docs = self._query(f"FOR c IN {AD_CHARGES} FILTER c.tenant_id == @tenant AND (@line_item == null OR "
                           "c.line_item == @line_item) SORT c.ts, c.ad_id RETURN c", tenant=tenant, line_item=line_item)
        return [{f: d.get(f) for f in CHARGE_FIELDS} for d in docs]

    def log_ad_serves(self, tenant: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.db.collection(AD_SERVES).insert_many(
                [{"tenant_id": tenant, **{f: r.get(f) for f in AD_SERVE_FIELDS}} for r in rows], silent=True)

    def read_ad_serves(self, tenant: str, since: float = 0.0) -> list[dict[str, Any]]:
        docs = self._query(f"FOR a IN {AD_SERVES} FILTER a.tenant_id == @tenant AND a.ts >= @since SORT a.ts RETURN a",
                           tenant=tenant, since=since)
        return [{f: d.get(f) for f in AD_SERVE_FIELDS} for d in docs]

    # -- webhooks and notifications ----------------------------------------------------------
    def put_webhook(self, tenant: str, record: dict[str, Any], if_updated_at: float | None = None) -> dict[str, Any]:
        require_tenant(self, tenant)
        stored = {**record, "updated_at": time.time()}
        key = document_key(tenant, record["id"])
        if if_updated_at is None:
            try:
                self.db.collection(WEBHOOKS).insert({"_key": key, "tenant_id": tenant, "record": stored}, sync=True)
            except DocumentInsertError:
                raise Conflict(f"webhook {record['id']!r} exists already") from None
        elif not self._query(f"FOR w IN {WEBHOOKS} FILTER w._key == @key AND w.record.updated_at == @expected "
                             f"UPDATE w WITH {{record: @record}} IN {WEBHOOKS} OPTIONS {{mergeObjects: false, "
                             "waitForSync: true}} RETURN 1", key=key, expected=if_updated_at, record=stored):
            raise Conflict(f"webhook {record['id']!r} changed meanwhile (or does not exist); read it again")
        return stored

    def get_webhook(self, tenant: str, webhook_id: str) -> dict[str, Any] | None:
        doc = self.db.collection(WEBHOOKS).get(document_key(tenant, webhook_id))
        return None if doc is None else {**doc["record"], "tenant": tenant}

    def list_webhooks(self, tenant: str | None = None) -> list[dict[str, Any]]:
        docs = self._query(f"FOR w IN {WEBHOOKS} FILTER @tenant == null OR w.tenant_id == @tenant "
                           "SORT w.tenant_id, w.record.id RETURN w", tenant=tenant)
        return [{**d["record"], "tenant": d["tenant_id"]} for d in docs]

    def enqueue_notifications(self, tenant: str, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        docs = [{"_key": document_key(tenant, f"{r['webhook_id']}\x00{r['event_id']}"), "tenant_id": tenant,
                 "tenant": tenant, "webhook_id": r["webhook_id"], "event_id": r["event_id"], "type": r["type"],
                 "payload": r["payload"], "status": "pending", "attempts": [], "next_attempt_at": r["created_at"],
                 "created_at": r["created_at"]} for r in rows]
        return len(self._query(f"FOR d IN @docs INSERT d INTO {NOTIFICATIONS} OPTIONS {{ignoreErrors: true, "
                               "waitForSync: true}} RETURN NEW._key", docs=docs))

    @staticmethod
    def _notification(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if not k.startswith("_") and k != "tenant_id"}

    def claim_notifications(self, now: float, limit: int = 100, lease_s: float = 120.0) -> list[dict[str, Any]]:
        # One AQL statement: each document is read and moved ahead atomically (a concurrent claimer's
        # write conflicts and fails, so nothing is sent twice).
        docs = self._query(f"FOR n IN {NOTIFICATIONS} FILTER n.status == 'pending' AND n.next_attempt_at <= @now "
                           f"SORT n.next_attempt_at, n.created_at LIMIT @limit UPDATE n WITH "
                           f"{{next_attempt_at: @until}} IN {NOTIFICATIONS} OPTIONS {{waitForSync: true}} RETURN OLD",
                           now=now, limit=limit, until=now + lease_s)
        return [self._notification(d) for d in docs]

    def record_attempt(self, tenant: str, webhook_id: str, event_id: str, attempt: dict[str, Any], status: str,
                       next_attempt_at: float | None) -> None:
        self._query(f"FOR n IN {NOTIFICATIONS} FILTER n._key == @key UPDATE n WITH {{attempts: APPEND(n.attempts, "
                    f"[@attempt]), status: @status, next_attempt_at: @next}} IN {NOTIFICATIONS} "
                    "OPTIONS {waitForSync: true}", key=document_key(tenant, f"{webhook_id}\x00{event_id}"),
                    attempt=attempt, status=status, next=next_attempt_at)

    def list_notifications(self, tenant: str, webhook_id: str, limit: int = 100) -> list[dict[str, Any]]:
        docs = self._query(f"FOR n IN {NOTIFICATIONS} FILTER n.tenant_id == @tenant AND n.webhook_id == @webhook "
                           "SORT n.created_at DESC LIMIT @limit RETURN n", tenant=tenant, webhook=webhook_id,
                           limit=limit)
        return [self._notification(d) for d in docs]

    # -- audience segments -------------------------------------------------------------------
    def apply_segment(self, tenant: str, segment: str, add: list[str], remove: list[str],
                      replace: bool = False) -> None:
        txn = self.db.begin_transaction(write=[SEGMENT_MEMBERS], sync=True)
        try:
            if replace:
                txn.aql.execute(f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant AND m.segment == @segment "
                                f"REMOVE m IN {SEGMENT_MEMBERS}", bind_vars={"tenant": tenant, "segment": segment})
            txn.aql.execute(f"FOR k IN @keys REMOVE k IN {SEGMENT_MEMBERS} OPTIONS {{ignoreErrors: true}}",
                            bind_vars={"keys": [document_key(tenant, f"{segment}\x00{u}") for u in remove]})
            txn.aql.execute(f"FOR d IN @docs UPSERT {{_key: d._key}} INSERT d UPDATE {{}} IN {SEGMENT_MEMBERS}",
                            bind_vars={"docs": [{"_key": document_key(tenant, f"{segment}\x00{u}"), "tenant_id": tenant,
                                                 "segment": segment, "user_id": u} for u in add]})
            txn.commit_transaction()
        except BaseException:
            txn.abort_transaction()
            raise

    def drop_segment(self, tenant: str, segment: str) -> None:
        self._query(f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant AND m.segment == @segment "
                    f"REMOVE m IN {SEGMENT_MEMBERS}", tenant=tenant, segment=segment)

    def user_segments(self, tenant: str, user_id: str) -> list[str]:
        return self._query(f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant AND m.user_id == @user "
                           "SORT m.segment RETURN m.segment", tenant=tenant, user=user_id)

    def segment_members(self, tenant: str, segment: str) -> list[str]:
        return self._query(f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant AND m.segment == @segment "
                           "SORT m.user_id RETURN m.user_id", tenant=tenant, segment=segment)

    def segment_sizes(self, tenant: str) -> dict[str, int]:
        rows = self._query(f"FOR m IN {SEGMENT_MEMBERS} FILTER m.tenant_id == @tenant COLLECT s = m.segment "
                           "WITH COUNT INTO n RETURN [s, n]", tenant=tenant)
        return {segment: int(n) for segment, n in rows}

    # -- experiments -------------------------------------------------------------------------
    def create_experiment(self, tenant: str, record: dict[str, Any]) -> dict[str, Any]:
        require_tenant(self, tenant)
        now = time.time()
        stored = {**record, "created_at": now, "updated_at": now}
        try:
            self.db.collection(EXPERIMENTS).insert({"_key": document_key(tenant, record["name"]), "tenant_id": tenant,
                                                    "name": record["name"], "record": stored}, sync=True)
        except DocumentInsertError:
            raise Conflict(f"tenant {tenant!r} already has an experiment {record['name']!r}; pick another name") from None
        return stored

    def update_experiment(self, tenant: str, record: dict[str, Any], if_updated_at: float) -> dict[str, Any]:
        stored = {**record, "updated_at": time.time()}
        updated = self._query(UPDATE_EXPERIMENT_AQL, key=document_key(tenant, record["name"]), record=stored,
                              expected=if_updated_at)
        if not updated:
            raise Conflict(f"experiment {record['name']!r} changed meanwhile (or does not exist); read it again")
        return stored

    def get_experiment(self, tenant: str, name: str) -> dict[str, Any] | None:
        doc = self.db.collection(EXPERIMENTS).get(document_key(tenant, name))
        return None if doc is None else doc["record"]

    def list_experiments(self, tenant: str) -> list[dict[str, Any]]:
        return [d["record"] for d in self._query(
            f"FOR e IN {EXPERIMENTS} FILTER e.tenant_id == @tenant SORT e.name RETURN e", tenant=tenant)]

    # -- preferences -------------------------------------------------------------------------
    def put_preferences(self, tenant: str, user_id: str, preferences: dict[str, Any]) -> None:
        require_tenant(self, tenant)
        self.db.collection(PREFERENCES).insert(
            {"_key": document_key(tenant, user_id), "tenant_id": tenant, "user_id": user_id,
             "preferences": preferences, "updated_at": time.time()},
            overwrite=True, sync=True,
        )

    def get_preferences(self, tenant: str, user_id: str) -> dict[str, Any] | None:
        doc = self.db.collection(PREFERENCES).get(document_key(tenant, user_id))
        return None if doc is None else doc["preferences"]
