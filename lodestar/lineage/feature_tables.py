"""The feature tables: per item (text to embed, content hash, popularity) and per user (activity)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from lodestar import features
from lodestar.lineage.files import TenantFiles, read_extract, read_parquet, write_parquet
from lodestar.tenant_config import TenantConfig


@dataclass(frozen=True)
class ItemFeaturesResult:
    rows: int
    indexable: int  # available and not deleted: what the index will hold
    with_interactions: int
    new_texts: int  # indexable items whose text was not in the previous table (to be encoded)


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
                              new_texts=int((~live["content_hash"].isin(previous)).sum()) if not live.empty else 0)


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
