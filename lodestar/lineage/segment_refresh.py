"""Keeping a tenant's audience segments' members in the CDP store up to date (``audience_segments``).

In full (when the definitions changed, on a new UTC day, so that "in the last 30 days" lets users
age out, or on the first run) every rule segment is evaluated over every user and replaces its
members; lookalikes are recomputed from their seeds. Otherwise incrementally: only the users whose
events or profiles changed since the last run are evaluated again (a rule is a test of one user at
a time, so their answers are exact) and added to or removed from each rule segment; lookalikes keep
their members until the next full refresh.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lodestar.cdp import CdpStore
from lodestar.collab import event_item_weights
from lodestar.lineage.collab_fit import candidate_model
from lodestar.lineage.files import TenantFiles, read_extract
from lodestar.segments import Population, Segment, lookalikes, members
from lodestar.tenant_config import TenantConfig

WATERMARK_MARGIN_S = 2.0


@dataclass
class SegmentsResult:
    mode: str  # "full", "incremental" or "unchanged"
    sizes: dict[str, int]
    changed_users: int = 0
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)


def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _population(files: TenantFiles, now: float) -> tuple[Population, pd.DataFrame, pd.DataFrame]:
    users, events, items = (read_extract(files, e) for e in ("users", "events", "items"))
    if "deleted" in users:
        users = users[~users["deleted"].astype(bool)]
    if "deleted" in items:
        items = items[~items["deleted"].astype(bool)]
    people = pd.DataFrame({"id": users["id"] if len(users) else [],
                           "attributes": [_attributes(a) for a in users["attributes"]] if len(users) else []})
    catalog = pd.DataFrame({"id": items["id"] if len(items) else [],
                            "categories": [list(c) if c is not None else [] for c in items["categories"]] if len(items)
                            else [],
                            "attributes": [_attributes(a) for a in items["attributes"]] if len(items) else []})
    acts = events[["user_id", "item_id", "type", "ts"]] if len(events) else pd.DataFrame(
        columns=["user_id", "item_id", "type", "ts"])
    return Population(people, acts, catalog, now), users, events


def _definitions_hash(segments: tuple[Segment, ...]) -> str:
    text = json.dumps([[s.name, s.rule, s.seed, s.size] for s in segments], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def refresh_segments(store: CdpStore, tenant: str, files: TenantFiles, config: TenantConfig,
                     now: float | None = None, full: bool = False) -> SegmentsResult:
    now = time.time() if now is None else now
    segments = config.parsed_segments
    state_path = files.root / "segments.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    digest, day = _definitions_hash(segments), time.strftime("%Y-%m-%d", time.gmtime(now))
    population, users, events = _population(files, now)
    events_mark = float(events["updated_at"].max()) if len(events) else 0.0
    users_mark = float(users["updated_at"].max()) if len(users) else 0.0
    incremental = not full and state.get("definitions") == digest and state.get("day") == day
    for gone in set(state.get("segments", [])) - {s.name for s in segments}:
        store.drop_segment(tenant, gone)  # a segment no longer defined has no members
    added: dict[str, int] = {}
    removed: dict[str, int] = {}
    changed_users = 0
    if incremental:
        # From a little before the last marks (a margin for the clocks of the writing processes, as
        # the ArangoDB change reads allow): a user evaluated twice is harmless, a missed one would
        # wait for the next day's full refresh.
        since_events = state.get("events_mark", 0.0) - WATERMARK_MARGIN_S
        since_users = state.get("users_mark", 0.0) - WATERMARK_MARGIN_S
        changed = set(events.loc[events["updated_at"] > since_events, "user_id"]) if len(events) else set()
        changed |= set(users.loc[users["updated_at"] > since_users, "id"]) if len(users) else set()
        changed_users = len(changed)
        if changed:
            subset = Population(population.users[population.users["id"].isin(changed)],
                                population.events[population.events["user_id"].isin(changed)],
                                population.items, now)
            for segment in segments:
                if segment.lookalike:
                    continue
                now_in = members(segment.rule, subset) & changed
                was_in = set(store.segment_members(tenant, segment.name)) & changed
                add, drop = sorted(now_in - was_in), sorted(was_in - now_in)
                if add or drop:
                    store.apply_segment(tenant, segment.name, add, drop)
                added[segment.name], removed[segment.name] = len(add), len(drop)
    else:
        picked: dict[str, set[str]] = {}
        for segment in segments:
            if not segment.lookalike:
                picked[segment.name] = members(segment.rule, population)
        vectors = _taste_vectors(files, population, config) if any(s.lookalike for s in segments) else {}
        for segment in segments:
            if segment.lookalike:
                picked[segment.name] = lookalikes(picked.get(segment.seed, set()), vectors, segment.size)
        for name, chosen in picked.items():
            store.apply_segment(tenant, name, sorted(chosen), [], replace=True)
            added[name] = len(chosen)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"definitions": digest, "day": day, "events_mark": events_mark,
                                      "users_mark": users_mark, "segments": [s.name for s in segments]}))
    sizes = store.segment_sizes(tenant)
    return SegmentsResult("incremental" if incremental else "full", {s.name: sizes.get(s.name, 0) for s in segments},
                          changed_users, added, removed)


def _taste_vectors(files: TenantFiles, population: Population, config: TenantConfig) -> dict[str, Any]:
    """Every user's folded-in collaborative vector (what their recommendations start from)."""
    model = candidate_model(files)
    if model is None or population.events.empty:
        return {}
    out = {}
    for user, rows in population.events.groupby("user_id"):
        vector = model.query_vector(event_item_weights(rows.to_dict("records"), config))
        if vector is not None:
            out[user] = vector
    return out
