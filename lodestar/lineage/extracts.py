"""Incremental CDP extracts: each entity of a tenant copied from the CDP store into Parquet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lodestar.cdp import CdpStore, Watermark
from lodestar.lineage.files import TenantFiles, read_parquet, write_parquet
from lodestar.records import ENTITY_FIELDS

# An extract holds the entity's fields and the store's change stamp.
EXTRACT_COLUMNS: dict[str, list[str]] = {entity: [*fields, "updated_at"] for entity, fields in ENTITY_FIELDS.items()}


@dataclass(frozen=True)
class ExtractResult:
    rows: int
    changed: int
    mode: str  # "full" or "incremental"
    watermark: str | None
    path: Path
    deleted: int = 0  # rows flagged deleted (items, users)
    erased: int = 0  # events dropped because their user was erased (events)


def _frame(rows: list[dict[str, Any]], entity: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=EXTRACT_COLUMNS[entity])
    if "attributes" in df:
        df["attributes"] = df["attributes"].map(lambda a: json.dumps(a or {}, sort_keys=True))
    if entity == "items":
        for col in ("categories", "tags"):
            df[col] = df[col].map(lambda v: list(v) if isinstance(v, (list, tuple)) else [])
    return df


def _read_changes(store: CdpStore, tenant: str, entity: str, since: Watermark | None) -> list[dict[str, Any]]:
    return [row for batch in store.read_changes(tenant, entity, since) for row in batch]


def extract(store: CdpStore, tenant: str, entity: str, files: TenantFiles, full: bool = False) -> ExtractResult:
    """Bring an entity's Parquet extract up to date with the CDP.

    Incremental by default: only rows past the stored ``(updated_at, id)`` watermark are read and
    merged by id (a soft delete arrives as a changed row). ``full`` (or a missing extract) reads
    everything. The events extract also drops the events of users erased since its last run, since
    an erasure deletes events in the CDP, which no watermark can show.
    """
    path, state_path = files.extract(entity), files.extract_state(entity)
    state = json.loads(state_path.read_text()) if state_path.is_file() and path.is_file() and not full else {}
    since = Watermark.decode(state["watermark"]) if state.get("watermark") else None
    rows = _read_changes(store, tenant, entity, since)
    delta = _frame(rows, entity)
    incremental = bool(state)
    if incremental:
        current = read_parquet(path)
        df = pd.concat([current[~current["id"].isin(delta["id"])], delta], ignore_index=True)
    else:
        df = delta
    erased = 0
    if entity == "events":
        users_since = Watermark.decode(state["users_seen"]) if state.get("users_seen") else None
        user_changes = _read_changes(store, tenant, "users", users_since) if incremental else []
        gone = {u["id"] for u in user_changes if u["deleted"]}
        if gone:
            before = len(df)
            df = df[~df["user_id"].isin(gone)]
            erased = before - len(df)
        latest_user = store.latest_watermark(tenant, "users")
        state["users_seen"] = latest_user.encode() if latest_user else None
    if rows:
        state["watermark"] = Watermark(float(rows[-1]["updated_at"]), str(rows[-1]["_key"])).encode()
    if not incremental or not delta.empty or erased:  # an unchanged extract is not rewritten
        write_parquet(df.reset_index(drop=True), path)
    state_path.write_text(json.dumps(state))  # after the data: a crash in between only re-reads a delta
    return ExtractResult(rows=len(df), changed=len(delta), mode="incremental" if incremental else "full",
                         watermark=state.get("watermark"), path=path,
                         deleted=int(df["deleted"].sum()) if "deleted" in df else 0, erased=erased)
