"""Erasing a user (the right to erasure): their events, preferences and served lists leave the CDP
store at once, and the audit log records who erased whom and how much (never what was erased)."""

from __future__ import annotations

from lodestar.cdp import CdpStore, audit_entry


def erase_user(store: CdpStore, tenant: str, user_id: str, actor: str) -> dict[str, int]:
    """Erase ``user_id`` of ``tenant``; returns how many events, preferences and served lists went."""
    counts = store.erase_user(tenant, user_id)
    store.append_audit(tenant, audit_entry(actor, "user.erase", user_id, None, counts))
    return counts
