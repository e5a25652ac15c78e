"""The CDP store port: tenants, API keys, items, users, events and preferences, per tenant.

Every adapter reads each entity incrementally per tenant by an ``(updated_at, _key)`` watermark,
where ``updated_at`` is stamped by the store when a row changes (so a watermark never skips a late
write) and ``_key``, carried by every changed row, is the adapter's tie-break (the id in SQLite, the
document key in ArangoDB); deletes are seen through soft-delete flags.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

from lodestar.errors import InvalidInput, UnknownTenant
from lodestar.records import ENTITY_FIELDS, USER_FIELDS
from lodestar.settings import Settings

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENTITIES = tuple(ENTITY_FIELDS)
# Fields stored as JSON lists or objects (absent ones become empty) and as booleans.
JSON_FIELDS = {"categories": list, "tags": list, "attributes": dict}
FLAG_FIELDS = frozenset({"available", "deleted"})
# A served list as ``read_served`` returns it.
# ``unit_id``: the user or session an experiment assigned by; ``experiments``: [[experiment, variant], ...].
# One served ad (or ghost: the ad a held-out user would have been shown), for incrementality.
AD_SERVE_FIELDS = ("user_id", "line_item", "campaign", "advertiser", "product", "placement", "ghost", "ts",
                   "ad_id", "position", "relevance", "bid", "price")
# One charged ad click in the spend ledger (lodestar.ads); price in micros.
CHARGE_FIELDS = ("ad_id", "line_item", "advertiser", "product", "user_id", "price", "day", "ts")
SERVED_FIELDS = ("recommendation_id", "user_id", "endpoint", "strategy", "items", "ts", "unit_id", "experiments")


# What an API key may do: ``read`` recommendations, similar items and search (safe to ship inside a
# browser or an app), write ``events`` and preferences, ``admin``: erase users and manage keys.
READ, EVENTS, ADMIN = "read", "events", "admin"
ALL_SCOPES = (READ, EVENTS, ADMIN)


# What a console member may do in a tenant, least first: ``viewer`` reads, ``editor`` also changes the
# configuration and rules and materializes, ``owner`` also manages members and API keys and erases users.
ROLES = ("viewer", "editor", "owner")
# The audit log of what concerns no one tenant (tenants created, operators granted); no tenant name
# can take it (names start with a letter or digit).
OPERATOR_LOG = "_operators"


class StoredKey(NamedTuple):
    tenant: str
    key_hash: str
    scopes: tuple[str, ...]
    advertiser: str | None = None  # an advertiser's key: that advertiser's campaigns only, no scope


def stored_scopes(text: str | None) -> tuple[str, ...]:
    """Scopes as stored (comma-separated); keys issued before scopes existed hold every scope."""
    return ALL_SCOPES if not text else tuple(s for s in text.split(",") if s)


class Watermark(NamedTuple):
    """Position in an entity's change stream: rows strictly after ``(updated_at, id)``."""

    updated_at: float
    id: str

    def encode(self) -> str:
        return f"{self.updated_at!r}|{self.id}"

    @classmethod
    def decode(cls, text: str) -> Watermark:
        stamp, _, ident = text.partition("|")
        return cls(float(stamp), ident)


# Names the Qdrant server adapter gives its own collections (lodestar--shared, lodestar--registry),
# which a tenant's alias (lodestar--<tenant>) must never take.
RESERVED_TENANT_NAMES = ("shared", "registry")


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise InvalidInput(
            f"tenant name {name!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if name in RESERVED_TENANT_NAMES:
        raise InvalidInput(f"tenant name {name!r} is reserved (the index uses it); pick another name")
    return name


def check_entity(entity: str) -> str:
    """``entity`` when it names one of the CDP's entities; otherwise an error listing them."""
    if entity not in ENTITIES:
        raise InvalidInput(f"entity must be one of {', '.join(ENTITIES)}, got {entity!r}")
    return entity


def unknown_tenant(name: str) -> UnknownTenant:
    """The error for an unknown (or deleted) tenant, saying how to create it."""
    return UnknownTenant(f"tenant {name!r} does not exist; create it with `lodestar tenants create {name}`")


def unknown_account(email: str) -> UnknownTenant:
    """The error for a console account that does not exist, saying how to create it."""
    return UnknownTenant(f"there is no console account {email!r}; create it with `lodestar members add {email} ...`")


def stored_values(record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The values an adapter stores for ``fields`` of a record: absent lists and attributes become
    empty ones, flags become booleans."""
    out = {}
    for f in fields:
        value = record.get(f)
        if value is None and f in JSON_FIELDS:
            value = JSON_FIELDS[f]()
        elif f in FLAG_FIELDS:
            value = bool(value)
        out[f] = value
    return out


def audit_entry(actor: str, action: str, target: str = "", before: Any = None, after: Any = None) -> dict[str, Any]:
    """One audit log entry: ``actor`` (``key:<id>``, ``operator``, ``cli:<user>``), ``action``
    (``config.set``, ``config.restore``, ``quotas.set``, ``key.create``, ``key.revoke``), what it
    acted on, and the state before and after."""
    return {"at": time.time(), "actor": actor, "action": action, "target": target, "before": before, "after": after}


def row_hash(record: dict[str, Any], fields: tuple[str, ...]) -> str:
    """A digest of a record's content; an upsert whose digest equals the stored one changes nothing.
    ``source_updated_at`` is left out: a newer source stamp on the same content is not a change."""
    payload = json.dumps([record.get(f) for f in fields if f != "source_updated_at"], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def erased_user(user_id: str) -> tuple[dict[str, Any], str]:
    """The tombstone that replaces an erased user's profile, and its row hash. The hash carries an
    ``-erased`` suffix, so it never equals the hash of any upserted row."""
    record = {"id": user_id, "attributes": {}, "deleted": True, "source_updated_at": None}
    return record, row_hash(record, USER_FIELDS) + "-erased"


class CdpStore(Protocol):
    """What Lodestar needs from a customer data platform."""

    # tenants and their configuration
    def create_tenant(self, name: str, config: dict[str, Any] | None = None) -> dict[str, Any]: ...
    def get_tenant(self, name: str) -> dict[str, Any] | None: ...
    def list_tenants(self) -> list[dict[str, Any]]: ...
    def set_tenant_config(self, name: str, config: dict[str, Any], audit: dict[str, Any] | None = None,
                          if_updated_at: float | None = None) -> None:
        """Store the configuration; with ``audit`` (an :func:`audit_entry`), record it in the tenant's
        audit log in the same transaction. With ``if_updated_at``, only if the tenant record is still
        the one read then (else :class:`Conflict`: a concurrent change, say the operator's quotas,
        is never overwritten by a configuration read before it)."""
        ...

    # the audit log: who changed what, when, with the state before and after
    def append_audit(self, tenant: str, entry: dict[str, Any]) -> None: ...
    def read_audit(self, tenant: str, limit: int = 100, action_prefix: str = "") -> list[dict[str, Any]]:
        """The newest ``limit`` entries (newest first), each with its ``id``; only actions starting
        with ``action_prefix`` when given."""
        ...

    # API keys (stored hashed), each with scopes; a revoked key is kept (listed) but never found
    def add_api_key(self, tenant: str, key_id: str, key_hash: str, scopes: tuple[str, ...] = ALL_SCOPES,
                    label: str = "", advertiser: str | None = None) -> None: ...
    def find_api_key(self, key_id: str) -> StoredKey | None:
        """The key's tenant, hash and scopes; ``None`` for an unknown or revoked key or a deleted tenant."""
        ...
    def list_api_keys(self, tenant: str) -> list[dict[str, Any]]:
        """Every key of a tenant: ``key_id``, ``scopes``, ``label``, ``created_at``, ``revoked_at``,
        ``last_used_at`` (never the hash)."""
        ...
    def revoke_api_key(self, tenant: str, key_id: str) -> bool:
        """Revoke a key of the tenant at once; ``False`` when the tenant has no such key."""
        ...

    def touch_api_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (``key_id`` -> epoch seconds; an older time never
        replaces a newer one). Servers batch these, so "last used" is right to within a minute."""
        ...

    # console accounts (people, signing in with a password) and their roles per tenant
    def put_account(self, email: str, password_hash: str, operator: bool = False) -> None:
        """Create the account or replace its password hash and operator flag (clearing failed sign-ins)."""
        ...
    def get_account(self, email: str) -> dict[str, Any] | None:
        """``email``, ``password_hash``, ``operator``, ``created_at``, ``failed_signins``, ``last_failed_at``."""
        ...
    def list_accounts(self) -> list[dict[str, Any]]:
        """Every account: ``email``, ``operator``, ``created_at`` (never the hash)."""
        ...
    def record_signin(self, email: str, succeeded: bool) -> None:
        """Count a failed sign-in (and stamp it), or clear the count after a good one."""
        ...
    def set_member(self, tenant: str, email: str, role: str) -> None:
        """Give the account a role in the tenant (replacing its role there); both must exist."""
        ...
    def remove_member(self, tenant: str, email: str) -> bool: ...
    def list_members(self, tenant: str) -> list[dict[str, Any]]:
        """``email``, ``role``, ``added_at`` of each member of the tenant."""
        ...
    def account_roles(self, email: str) -> dict[str, str]:
        """Tenant name -> role, for the live tenants the account is a member of."""
        ...

    # reports: small tables the pipeline computes per tenant for the console (one JSON list each)
    def put_report(self, tenant: str, name: str, rows: list[dict[str, Any]]) -> None: ...
    def get_report(self, tenant: str, name: str) -> dict[str, Any] | None:
        """``{"rows": [...], "updated_at": epoch}``, or ``None`` before the pipeline first wrote it."""
        ...

    # experiments (lodestar.experiments): one record per tenant and name, changed only over the
    # record it was read as
    def create_experiment(self, tenant: str, record: dict[str, Any]) -> dict[str, Any]:
        """Store a new experiment (``record["name"]``; :class:`Conflict` when the name is taken);
        returns it with ``created_at`` and ``updated_at``."""
        ...
    def update_experiment(self, tenant: str, record: dict[str, Any], if_updated_at: float) -> dict[str, Any]:
        """Replace the experiment, only if it is still the one read at ``if_updated_at``."""
        ...
    def get_experiment(self, tenant: str, name: str) -> dict[str, Any] | None: ...
    def list_experiments(self, tenant: str) -> list[dict[str, Any]]:
        """Every experiment of the tenant, by name."""
        ...

    # retail media: advertisers (principals inside a tenant) and their line items (lodestar.ads)
    def create_advertiser(self, tenant: str, advertiser: dict[str, Any]) -> dict[str, Any]:
        """Store a new advertiser (``id``, ``name``); :class:`Conflict` when the id is taken."""
        ...
    def get_advertiser(self, tenant: str, advertiser_id: str) -> dict[str, Any] | None: ...
    def list_advertisers(self, tenant: str) -> list[dict[str, Any]]: ...
    def put_line_item(self, tenant: str, record: dict[str, Any], if_updated_at: float | None = None) -> dict[str, Any]:
        """Store a line item (``id``, ``advertiser``, ...): new when ``if_updated_at`` is None
        (:class:`Conflict` if the id is taken), else only over the record read at that time."""
        ...
    def get_line_item(self, tenant: str, line_item_id: str) -> dict[str, Any] | None: ...
    def list_line_items(self, tenant: str, advertiser: str | None = None) -> list[dict[str, Any]]: ...

    # retail media: the spend ledger (lodestar.ads); money in integer micros
    def charge_click(self, tenant: str, charge: dict[str, Any], daily_budget: int, total_budget: int,
                     repeat_window_s: float = 0.0) -> dict[str, Any]:
        """Charge one ad click atomically: ``charge`` holds ``ad_id`` (charged at most once, ever),
        ``line_item``, ``advertiser``, ``product``, ``user_id``, ``price`` (micros), ``day`` (UTC
        date) and ``ts``. It is not charged when that user's click on that line item's product was
        charged less than ``repeat_window_s`` before (a repeat is one click). It is charged only
        while the line item's spend today is below ``daily_budget`` and its total below
        ``total_budget`` (so overspend is bounded by one click's price), in one transaction with the
        spend counters, whichever process charges. Returns ``charged`` (bool), ``reason`` when not,
        and the line item's ``spent_today`` and ``spent_total`` after it."""
        ...
    def ad_spend(self, tenant: str, line_item: str, day: str) -> dict[str, int]:
        """``spent_today`` and ``spent_total`` of a line item (micros)."""
        ...
    def ad_spend_all(self, tenant: str, day: str) -> dict[str, dict[str, int]]:
        """Per line item with any spend: ``spent_today`` and ``spent_total`` (one read for all)."""
        ...
    def line_items_stamp(self, tenant: str) -> tuple[int, float]:
        """How many line items the tenant has and the sum of their ``updated_at``: changes when any
        line item does (whatever the clocks of the processes that write them)."""
        ...
    def ad_charges(self, tenant: str, line_item: str | None = None) -> list[dict[str, Any]]:
        """The ledger's charges, oldest first (a line item's only, when given)."""
        ...
    def log_ad_serves(self, tenant: str, rows: list[dict[str, Any]]) -> None:
        """Ads served to known users, and ghosts (``ghost``: the ad a user held out of its campaign
        would have been shown), each with :data:`AD_SERVE_FIELDS`."""
        ...
    def read_ad_serves(self, tenant: str, since: float = 0.0) -> list[dict[str, Any]]: ...

    # advertisers' webhooks and their notifications (lodestar.ads.notify)
    def put_webhook(self, tenant: str, record: dict[str, Any], if_updated_at: float | None = None) -> dict[str, Any]:
        """Store a webhook (``id``, ``advertiser``, ``url``, ``secret``, ...): new when
        ``if_updated_at`` is None (:class:`Conflict` if the id is taken), else only over the record
        read at that time. Returns it with its new ``updated_at``."""
        ...
    def get_webhook(self, tenant: str, webhook_id: str) -> dict[str, Any] | None: ...
    def list_webhooks(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """A tenant's webhooks (every tenant's with ``None``: the delivery sensor), each with ``tenant``."""
        ...
    def enqueue_notifications(self, tenant: str, rows: list[dict[str, Any]]) -> int:
        """Queue notifications (``webhook_id``, ``event_id``, ``type``, ``payload``, ``created_at``);
        one already queued for that webhook (same event id) is not queued again. Returns how many
        were new."""
        ...
    def claim_notifications(self, now: float, limit: int = 100, lease_s: float = 120.0) -> list[dict[str, Any]]:
        """Pending notifications of every tenant whose next attempt is due, oldest first, claimed:
        their next attempt moves ``lease_s`` ahead in the same transaction, so two senders never
        take the same one (a sender that dies leaves it due again after the lease)."""
        ...
    def record_attempt(self, tenant: str, webhook_id: str, event_id: str, attempt: dict[str, Any], status: str,
                       next_attempt_at: float | None) -> None:
        """Log a delivery attempt and set the notification's ``status`` (pending, delivered, failed)."""
        ...
    def list_notifications(self, tenant: str, webhook_id: str, limit: int = 100) -> list[dict[str, Any]]: ...

    # audience segments (lodestar.segments): who is in each, as the pipeline last computed it
    def apply_segment(self, tenant: str, segment: str, add: list[str], remove: list[str],
                      replace: bool = False) -> None:
        """Add and remove members of a segment in one transaction (``replace``: the members become
        exactly ``add``)."""
        ...
    def drop_segment(self, tenant: str, segment: str) -> None: ...
    def user_segments(self, tenant: str, user_id: str) -> list[str]:
        """The segments a user is in, by name (one keyed read)."""
        ...
    def segment_members(self, tenant: str, segment: str) -> list[str]: ...
    def segment_sizes(self, tenant: str) -> dict[str, int]: ...

    # catalog, users, events
    def upsert_items(self, tenant: str, items: list[dict[str, Any]]) -> int: ...
    def upsert_users(self, tenant: str, users: list[dict[str, Any]]) -> int: ...
    def append_events(self, tenant: str, events: list[dict[str, Any]]) -> int: ...
    def read_changes(
        self, tenant: str, entity: str, since: Watermark | None = None, batch_size: int = 5000
    ) -> Iterator[list[dict[str, Any]]]: ...
    def latest_watermark(self, tenant: str, entity: str) -> Watermark | None: ...
    def latest_watermarks(self, entity: str) -> dict[str, Watermark]:
        """:meth:`latest_watermark` of every live tenant that has rows of ``entity``, in one query
        whose cost grows with the number of tenants, not of rows: the change sensor's one read per
        entity and tick."""
        ...
    def erase_user(self, tenant: str, user_id: str) -> dict[str, int]:
        """Delete a user's events, preferences, served lists and segment memberships; tombstone the
        profile. Returns how many of each went."""
        ...
    def delete_tenant(self, name: str) -> None: ...
    def count(self, tenant: str, entity: str) -> int: ...
    def count_events_since(self, tenant: str, since: float) -> int:
        """How many of the tenant's events were stored at or after ``since`` (epoch seconds; the
        events-per-day quota): a range count over the change index, not a scan of the events."""
        ...
    def get_item(self, tenant: str, item_id: str) -> dict[str, Any] | None: ...
    def find(self, tenant: str, entity: str, text: str, limit: int = 50) -> list[dict[str, Any]]:
        """Live ``items`` whose id starts with ``text`` or whose title contains it (case-insensitively),
        or ``users`` whose id starts with it; by id, at most ``limit``."""
        ...
    def get_user(self, tenant: str, user_id: str) -> dict[str, Any] | None: ...
    def deleted_ids(self, tenant: str, entity: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` are tombstones of ``items`` or ``users`` (deleted, or an erased user):
        ``get_item``/``get_user`` answer ``None`` for them as for ids never seen, and a connector
        filling catalog gaps or profiles must not bring them back."""
        ...
    def user_events(self, tenant: str, user_id: str, limit: int = 500) -> list[dict[str, Any]]: ...
    def user_events_written_after(
        self, tenant: str, user_id: str, written_after: float, limit: int = 500,
    ) -> list[dict[str, Any]]:
        """The user's events written (``updated_at``) after ``written_after``, latest ``ts`` first
        (events at the same ``ts`` in no particular order), as :meth:`user_events` gives them: what
        was added since a :meth:`user_events_mark` (whose count tells whether that is all that
        changed). An index read and those events."""
        ...
    def user_events_mark(self, tenant: str, user_id: str) -> tuple[int, float | None]:
        """How many events the user has and when the latest of them was written (``updated_at``):
        changes whenever an event of theirs is added or erased (a stored event is never rewritten:
        ``append_events`` keeps the first), so what is derived from their history may be kept while
        it holds. An index read, not a read of the events."""
        ...

    # served lists, for attribution (written in batches by the API, off the request path)
    def log_served(self, tenant: str, rows: list[dict[str, Any]]) -> None: ...
    def read_served(self, tenant: str, since: float = 0.0) -> list[dict[str, Any]]: ...

    # preferences
    def put_preferences(self, tenant: str, user_id: str, preferences: dict[str, Any]) -> None: ...
    def get_preferences(self, tenant: str, user_id: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


def open_cdp(settings: Settings) -> CdpStore:
    """The CDP adapter the settings choose: ArangoDB when ``LODESTAR_ARANGO_URL`` is set, else SQLite
    under the data dir."""
    if settings.arango_url:
        from lodestar.cdp.arango import ArangoCdpStore, connect

        try:
            db = connect(settings.arango_url, settings.arango_database, settings.arango_user, settings.arango_password)
            ready = db.has_collection("items") and db.has_collection("tenants")
        except Exception as exc:  # python-arango raises its own hierarchy; the message is what matters
            raise InvalidInput(
                f"cannot use the ArangoDB CDP at {settings.arango_url} (database {settings.arango_database!r}): {exc}; "
                "check LODESTAR_ARANGO_URL, LODESTAR_ARANGO_DATABASE, LODESTAR_ARANGO_USER and LODESTAR_ARANGO_PASSWORD"
            ) from None
        if not ready:
            raise InvalidInput(f"the ArangoDB database {settings.arango_database!r} has no Lodestar collections yet: "
                               "run `lodestar cdp init` once")
        return ArangoCdpStore(db, settle_s=settings.arango_settle_s)
    from lodestar.cdp.sqlite import SqliteCdpStore

    return SqliteCdpStore(settings.cdp_path)


@contextmanager
def cdp_session(settings: Settings) -> Iterator[CdpStore]:
    """The CDP store the settings choose (:func:`open_cdp`), closed when the block ends, also on error."""
    store = open_cdp(settings)
    try:
        yield store
    finally:
        store.close()


def require_tenant(store: CdpStore, name: str) -> dict[str, Any]:
    """The tenant's record, or :func:`unknown_tenant`'s error when there is none."""
    tenant = store.get_tenant(name)
    if tenant is None:
        raise unknown_tenant(name)
    return tenant
