"""Configuration versions: every stored configuration is an entry of the tenant's audit log
(``config.set`` or ``config.restore``), and any of them can be stored again in one step."""

from __future__ import annotations

from typing import Any

from lodestar.cdp import CdpStore, audit_entry
from lodestar.errors import Forbidden, NotFound
from lodestar.tenant_config import deep_merge, validate_config

CONFIG_ACTIONS = "config."  # the audit actions that store a configuration
SEARCHED = 10_000  # the newest versions a restore looks among


def restore_version(store: CdpStore, record: dict[str, Any], version_id: str, actor: str, how_to_list: str,
                    before: bool = False) -> dict[str, Any]:
    """Store again the configuration of version ``version_id`` of the tenant ``record`` (as read
    now), or with ``before`` the one that version replaced (undoing it, even when that was the
    defaults), keeping the operator's quotas as they are, audited as ``config.restore`` and written
    only over that record; returns the configuration stored. ``how_to_list`` ends the error for
    an unknown version."""
    tenant = record["name"]
    found = next((e for e in store.read_audit(tenant, SEARCHED, action_prefix=CONFIG_ACTIONS)
                  if e["id"] == version_id), None)
    if found is None:
        raise NotFound(f"tenant {tenant!r} has no configuration version {version_id!r}; list them with {how_to_list}")
    current = record["config"] or {}
    after = {k: v for k, v in (found["before" if before else "after"] or {}).items() if k != "quotas"}
    if "quotas" in current:
        after["quotas"] = current["quotas"]
    after = validate_config(after)
    target = f"{version_id} (before it)" if before else version_id
    store.set_tenant_config(tenant, after, audit=audit_entry(actor, "config.restore", target, current, after),
                            if_updated_at=record["updated_at"])
    return after


def proposed_config(record: dict[str, Any], change: dict[str, Any], replace: bool = False) -> dict[str, Any]:
    """The tenant ``record``'s stored configuration with ``change`` merged in (or replacing it),
    validated; the operator's quotas are kept as they are and may not be part of the change."""
    if "quotas" in change:
        raise Forbidden("quotas are set by the operator (PUT /v1/operator/tenants/{tenant}/quotas); "
                        "leave them out of the change")
    stored = dict(record["config"] or {})
    merged = dict(change) if replace else deep_merge(stored, change)
    if "quotas" in stored:
        merged["quotas"] = stored["quotas"]
    return validate_config(merged)


def store_config(store: CdpStore, record: dict[str, Any], after: dict[str, Any], actor: str) -> None:
    """Store ``after`` as the tenant's configuration, a new version (``config.set``) by ``actor``,
    written only over ``record`` as it was read (a concurrent change is a :class:`Conflict`)."""
    store.set_tenant_config(record["name"], after, audit=audit_entry(actor, "config.set", "config",
                                                                     record["config"] or {}, after),
                            if_updated_at=record["updated_at"])
