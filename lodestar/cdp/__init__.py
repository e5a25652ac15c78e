"""The CDP store port: tenants, API keys, items, users, events and preferences, per tenant.

Every adapter reads each entity incrementally per tenant by an ``(updated_at, id)`` watermark,
where ``updated_at`` is stamped by the store when a row changes (so a watermark never skips a late
write), and sees deletes through soft-delete flags.
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
    """The CDP adapter the settings choose: SQLite under the data dir unless an ArangoDB URL is set."""
    if settings.arango_url:
        raise NotImplementedError(
            "LODESTAR_ARANGO_URL is set, but the ArangoDB adapter is not part of this build yet; "
            "unset it to use the embedded SQLite store"
        )
    from lodestar.cdp.sqlite import SqliteCdpStore

    return SqliteCdpStore(settings.cdp_path)
