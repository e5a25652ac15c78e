"""API keys: random, shown once, stored hashed, compared in constant time; each with scopes.

A key reads ``lsk_<key_id>_<secret>``. The store keeps ``key_id``, the SHA-256 of the whole key and
the key's scopes; the key_id finds the row and :func:`hmac.compare_digest` compares the hash. Keys
carry 256 bits of randomness, so a fast hash is enough (a slow password hash protects
low-entropy secrets).

Scopes (``lodestar.cdp.ALL_SCOPES``): ``read`` (recommendations, similar items, search: safe to
ship inside a browser or an app), ``events`` (write events and preferences), ``admin`` (erase users,
list, issue and revoke keys). The operator key (``LODESTAR_ADMIN_KEY``) stands above tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from lodestar.cdp import ALL_SCOPES, CdpStore, audit_entry
from lodestar.errors import InvalidInput, NotFound

PREFIX = "lsk_"
OPERATOR = "operator"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MEMBER = "member"
ADVERTISER = "advertiser"


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: a tenant's key with its scopes, the operator (every tenant: the
    operator key, or a console account with the operator role), or a console member with a role
    in each of their tenants."""

    kind: str  # "tenant_key", "operator", "member" or "advertiser"
    tenant: str | None = None
    scopes: tuple[str, ...] = ()
    key_id: str | None = None
    account: str | None = None  # a console account's email
    roles: tuple[tuple[str, str], ...] = ()  # a member's (tenant, role) pairs
    advertiser: str | None = None  # an advertiser's key: that advertiser inside ``tenant``

    def may(self, scope: str) -> bool:
        return self.kind == OPERATOR or scope in self.scopes

    def role_in(self, tenant: str) -> str | None:
        """The console role in ``tenant``: an operator is its owner; ``None`` without one."""
        return "owner" if self.kind == OPERATOR else dict(self.roles).get(tenant)

    @property
    def actor(self) -> str:
        """Who this is in the audit log: ``operator``, ``console:<email>`` or ``key:<key id>``."""
        if self.account:
            return f"console:{self.account}"
        return "operator" if self.kind == OPERATOR else f"key:{self.key_id}"


def parse_scopes(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """Scopes from ``read,events`` text or a list; every scope when none are given."""
    if raw is None:
        return ALL_SCOPES
    items = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw)]
    scopes = tuple(dict.fromkeys(s for s in items if s))
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be some of {', '.join(ALL_SCOPES)} (got {', '.join(unknown) or 'none'})",
                           field="scopes")
    return scopes


def issue_key(store: CdpStore, tenant: str, scopes: tuple[str, ...] = ALL_SCOPES, label: str = "",
              advertiser: str | None = None) -> str:
    """Create a new API key for ``tenant`` (an advertiser's, with ``advertiser``: no tenant scope);
    the returned text is the only copy of the key."""
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    store.add_api_key(tenant, key_id, _hash(key), scopes, label, advertiser=advertiser)
    return key


def key_id_of(key: str) -> str:
    """The public part of a key (what lists show and revocation names)."""
    return key[len(PREFIX):].partition("_")[0]


def principal_for_key(store: CdpStore, key: str, operator_key: str | None = None) -> Principal | None:
    """Who ``key`` speaks for, or ``None`` for a malformed, unknown, revoked or wrong key."""
    if operator_key and hmac.compare_digest(key.encode(), operator_key.encode()):
        return Principal(OPERATOR)
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or not key_id or not secret:
        return None
    found = store.find_api_key(key_id)
    if found is None:
        return None
    if not hmac.compare_digest(found.key_hash, _hash(key)):
        return None
    if found.advertiser:
        return Principal(ADVERTISER, found.tenant, (), key_id, advertiser=found.advertiser)
    return Principal("tenant_key", found.tenant, found.scopes, key_id)



def create_key(store: CdpStore, tenant: str, scopes: tuple[str, ...], label: str, actor: str) -> str:
    """:func:`issue_key`, audited as ``key.create`` by ``actor``; the returned text is the only copy."""
    key = issue_key(store, tenant, scopes, label)
    store.append_audit(tenant, audit_entry(actor, "key.create", key_id_of(key), None,
                                           {"scopes": list(scopes), "label": label}))
    return key


def revoke_key(store: CdpStore, tenant: str, key_id: str, actor: str, how_to_list: str) -> None:
    """Revoke the tenant's key at once, audited as ``key.revoke``; ``how_to_list`` ends the error
    for an unknown key."""
    if not store.revoke_api_key(tenant, key_id):
        raise NotFound(f"tenant {tenant!r} has no API key {key_id!r}; list them with {how_to_list}")
    store.append_audit(tenant, audit_entry(actor, "key.revoke", key_id, {"revoked": False}, {"revoked": True}))
