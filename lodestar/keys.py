"""API keys: random, shown once, stored hashed, compared in constant time.

A key reads ``lsk_<key_id>_<secret>``. The store keeps ``key_id`` and the SHA-256 of the whole key;
the key_id finds the row and :func:`hmac.compare_digest` compares the hash. Keys carry 256 bits of
randomness, so a fast hash is enough (a slow password hash protects low-entropy secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from lodestar.cdp import CdpStore

PREFIX = "lsk_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key(store: CdpStore, tenant: str) -> str:
    """Create a new API key for ``tenant``; the returned text is the only copy of the key."""
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    store.add_api_key(tenant, key_id, _hash(key))
    return key


def tenant_for_key(store: CdpStore, key: str) -> str | None:
    """The tenant a key belongs to, or ``None`` for a malformed, unknown or wrong key."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or not key_id or not secret:
        return None
    found = store.find_api_key(key_id)
    if found is None:
        return None
    tenant, stored_hash = found
    return tenant if hmac.compare_digest(stored_hash, _hash(key)) else None
