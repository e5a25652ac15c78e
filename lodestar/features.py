"""Feature tables built from CDP extracts (pure pandas; no Dagster, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from lodestar.embed import content_hash
from lodestar.event_weights import event_weights

DAY = 86400.0

ITEM_FEATURE_COLUMNS = [
    "id", "kind", "title", "categories", "tags", "attributes", "available", "deleted",
    "text", "content_hash", "interactions", "popularity",
]


def item_text(title: str, description: str, categories: list[str], tags: list[str], attributes: dict[str, Any]) -> str:
    """The text that describes an item to the embedding model."""
    parts = [title.strip()]
    if categories:
        parts.append("Categories: " + ", ".join(categories))
    brand = attributes.get("brand")
    if isinstance(brand, str) and brand:
        parts.append(f"Brand: {brand}")
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    if description.strip():
        parts.append(description.strip())
    return ". ".join(p for p in parts if p)


def build_item_features(
    items: pd.DataFrame, events: pd.DataFrame, weights: dict[str, float], half_life_days: float, model: str
) -> pd.DataFrame:
    """One row per item: the text to embed and its content hash, and a popularity score.

    Popularity sums positive event weights, decayed by age relative to the newest event of the
    tenant, and is scaled to [0, 1].
    """
    items = items.copy()
    if items.empty:
        return pd.DataFrame(columns=ITEM_FEATURE_COLUMNS)
    attrs = items["attributes"].map(json.loads)
    items["text"] = [
        item_text(t, d, list(c), list(g), a)
        for t, d, c, g, a in zip(items["title"], items["description"], items["categories"], items["tags"], attrs, strict=True)
    ]
    items["content_hash"] = [content_hash(model, t) for t in items["text"]]
    if events.empty:
        items["interactions"] = 0
        items["popularity"] = 0.0
    else:
        w = np.clip(event_weights(events, weights), 0.0, None)
        age_days = (events["ts"].max() - events["ts"].to_numpy(dtype=float)) / DAY
        decayed = w * np.power(0.5, age_days / half_life_days)
        per_item = pd.DataFrame({"id": events["item_id"], "score": decayed, "n": 1}).groupby("id").sum()
        items = items.merge(per_item, how="left", left_on="id", right_index=True)
        items["interactions"] = items["n"].fillna(0).astype("int64")
        top = items["score"].max()
        items["popularity"] = (items["score"].fillna(0.0) / top) if top and top > 0 else 0.0
    return items[ITEM_FEATURE_COLUMNS].reset_index(drop=True)


def build_user_features(users: pd.DataFrame, events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per user: activity counts, last activity, and their most frequent categories."""
    columns = ["id", "deleted", "events", "distinct_items", "first_ts", "last_ts", "top_categories"]
    # A deleted (or erased) user leaves the table entirely.
    if not users.empty:
        gone = set(users.loc[users["deleted"].astype(bool), "id"])
        users = users[~users["id"].isin(gone)]
        events = events[~events["user_id"].isin(gone)] if not events.empty else events
    known = users[["id", "deleted"]] if not users.empty else pd.DataFrame(columns=["id", "deleted"])
    if events.empty:
        out = known.assign(events=0, distinct_items=0, first_ts=np.nan, last_ts=np.nan, top_categories=[[]] * len(known))
        return out[columns].reset_index(drop=True)
    activity = events.groupby("user_id").agg(
        events=("item_id", "size"), distinct_items=("item_id", "nunique"), first_ts=("ts", "min"), last_ts=("ts", "max")
    )
    cats = events[["user_id", "item_id"]].merge(
        items[["id", "categories"]], how="inner", left_on="item_id", right_on="id"
    ).explode("categories").dropna(subset=["categories"])
    top = (
        cats.groupby(["user_id", "categories"]).size().rename("n").reset_index()
        .sort_values(["user_id", "n", "categories"], ascending=[True, False, True])
        .groupby("user_id")["categories"].apply(lambda s: list(s[:5]))
    )
    activity["top_categories"] = top
    # Users seen only through events (no profile row) are users too.
    everyone = pd.DataFrame({"id": pd.unique(pd.concat([known["id"], pd.Series(activity.index)]))})
    out = everyone.merge(known, how="left", on="id").merge(activity, how="left", left_on="id", right_index=True)
    out["deleted"] = out["deleted"].astype("boolean").fillna(False).astype(bool)
    out["events"] = out["events"].fillna(0).astype("int64")
    out["distinct_items"] = out["distinct_items"].fillna(0).astype("int64")
    out["top_categories"] = out["top_categories"].map(lambda v: v if isinstance(v, list) else [])
    return out[columns].reset_index(drop=True)
