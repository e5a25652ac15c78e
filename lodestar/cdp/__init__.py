"""The CDP store port: tenants, API keys, items, users, events and preferences, per tenant.

Every adapter reads each entity incrementally per tenant by an ``(updated_at, _key)`` watermark,
where ``updated_at`` is stamped by the store when a row changes (so a watermark never skips a late
write) and ``_key``, carried by every changed row, is the adapter's tie-break (the id in SQLite, the
document key in ArangoDB); deletes are seen through soft-delete flags.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

from lodestar.errors import InvalidInput
from lodestar.settings import Settings

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENTITIES = ("items", "users", "events")


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


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise InvalidInput(
            f"tenant name {name!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


class CdpStore(Protocol):
    """What Lodestar needs from a customer data platform."""

    # tenants and their configuration
    def create_tenant(self, name: str, config: dict[str, Any] | None = None) -> dict[str, Any]: ...
    def get_tenant(self, name: str) -> dict[str, Any] | None: ...
    def list_tenants(self) -> list[dict[str, Any]]: ...
    def set_tenant_config(self, name: str, config: dict[str, Any]) -> None: ...

    # API keys (stored hashed)
    def add_api_key(self, tenant: str, key_id: str, key_hash: str) -> None: ...
    def find_api_key(self, key_id: str) -> tuple[str, str] | None: ...

    # catalog, users, events
    def upsert_items(self, tenant: str, items: list[dict[str, Any]]) -> int: ...
    def upsert_users(self, tenant: str, users: list[dict[str, Any]]) -> int: ...
    def append_events(self, tenant: str, events: list[dict[str, Any]]) -> int: ...
    def read_changes(
        self, tenant: str, entity: str, since: Watermark | None = None, batch_size: int = 5000
    ) -> Iterator[list[dict[str, Any]]]: ...
    def latest_watermark(self, tenant: str, entity: str) -> Watermark | None: ...
    def erase_user(self, tenant: str, user_id: str) -> dict[str, int]: ...
    def delete_tenant(self, name: str) -> None: ...
    def count(self, tenant: str, entity: str) -> int: ...
    def get_item(self, tenant: str, item_id: str) -> dict[str, Any] | None: ...
    def get_user(self, tenant: str, user_id: str) -> dict[str, Any] | None: ...
    def user_events(self, tenant: str, user_id: str, limit: int = 500) -> list[dict[str, Any]]: ...

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
