"""The feature tables: per item (text to embed, content hash, popularity) and per user (activity)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lodestar import features
from lodestar.lineage.files import (
    TenantFiles,
    read_extract,
    read_parquet,
    write_parquet,
)
from lodestar.tenant_config import TenantConfig

# One item holding more than this share of all popularity means the events are broken (a single
# future-dated event makes every other event decay to nothing), not that the item is popular: on
# MovieLens and the demo tenants the most popular item holds 0.5% to 2.5%.
MAX_POPULARITY_SHARE = 0.5
MIN_ITEMS_FOR_SHARE = 10  # below this many items with interactions, one item may well dominate


@dataclass(frozen=True)
class ItemFeaturesResult:
    rows: int
    indexable: int  # available and not deleted: what the index will hold
    with_interactions: int
    new_texts: int  # indexable items whose text was not in the previous table (to be encoded)
    problems: list[str] = field(default_factory=list)  # what the popularity_sane check reports


def popularity_problems(table: pd.DataFrame) -> list[str]:
    """What is wrong with the items' popularity (empty when fine): values that are not finite, or
    one item holding more than ``MAX_POPULARITY_SHARE`` of all popularity."""
    if table.empty:
        return []
    scores = table["popularity"].to_numpy(dtype=float)
    problems = []
    broken = int((~np.isfinite(scores)).sum())
    if broken:
        problems.append(f"{broken} items have a popularity that is not a finite number")
    finite = np.where(np.isfinite(scores), scores, 0.0)
    engaged = int((table["interactions"] > 0).sum())
    total = float(finite.sum())
    if engaged >= MIN_ITEMS_FOR_SHARE and total > 0 and finite.max() / total > MAX_POPULARITY_SHARE:
        top = table["id"].iloc[int(finite.argmax())]
        problems.append(
            f"item {top!r} holds {finite.max() / total:.0%} of all popularity among {engaged} items with events: "
            "look for events dated in the future or far in the past in the CDP (erase or fix them), then "
            "materialize again")
    return problems


@dataclass(frozen=True)
class UserFeaturesResult:
    rows: int
    active: int  # users with at least one event


def item_features(files: TenantFiles, config: TenantConfig, model: str) -> ItemFeaturesResult:
    df = features.build_item_features(read_extract(files, "items"), read_extract(files, "events"),
                                      config.event_weights, config.recency_half_life_days, model)
    previous = (set(pq.read_table(files.item_features, columns=["content_hash"]).column("content_hash").to_pylist())
                if files.item_features.is_file() else set())
    write_parquet(df, files.item_features)
    live = indexable(df)
    return ItemFeaturesResult(rows=len(df), indexable=len(live), with_interactions=int((df["interactions"] > 0).sum()),
                              new_texts=int((~live["content_hash"].isin(previous)).sum()) if not live.empty else 0,
                              problems=popularity_problems(df))


def indexable(item_features_table):
    """The items an index version holds: available and not deleted."""
    df = item_features_table
    return df[df["available"] & ~df["deleted"]].reset_index(drop=True) if not df.empty else df


def read_item_features(files: TenantFiles):
    return read_parquet(files.item_features)


def user_features(files: TenantFiles) -> UserFeaturesResult:
    df = features.build_user_features(read_extract(files, "users"), read_extract(files, "events"),
                                      read_extract(files, "items"))
    write_parquet(df, files.user_features)
    return UserFeaturesResult(rows=len(df), active=int((df["events"] > 0).sum()))
