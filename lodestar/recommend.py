"""Recommendations from a tenant's published index (content embeddings).

A user's taste vector is the weighted mean of the vectors of the items they interacted with,
weighted by event type (tenant configuration) and recency. It is computed from the user's events
as stored in the CDP at request time, so an accepted event shapes the very next request. Items the
user already interacted with are excluded; a user with no usable history gets popular items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lodestar.features import DAY
from lodestar.index import Hit, IndexReader

PERSONALIZED = "content_profile"
POPULAR = "popular"


@dataclass
class Recommendation:
    items: list[Hit]
    strategy: str


def taste_vector(
    events: list[dict[str, Any]], vectors: dict[str, np.ndarray], config: dict[str, Any]
) -> np.ndarray | None:
    """Weighted, recency-decayed mean of interacted items' vectors; ``None`` if nothing positive."""
    weights = config["event_weights"]
    half_life = float(config["recency_half_life_days"])
    recent = sorted(events, key=lambda e: e["ts"], reverse=True)[: int(config["max_profile_events"])]
    if not recent:
        return None
    newest = recent[0]["ts"]
    total = None
    positive = 0.0
    for event in recent:
        vector = vectors.get(event["item_id"])
        weight = float(weights.get(event["type"], 0.0))
        if event["type"] == "rating" and event.get("value") is not None:
            weight *= float(event["value"]) / 5.0
        if vector is None or weight == 0.0:
            continue
        weight *= math.pow(0.5, (newest - event["ts"]) / DAY / half_life)
        positive += max(weight, 0.0)
        total = weight * vector if total is None else total + weight * vector
    if total is None or positive <= 0.0:
        return None
    norm = float(np.linalg.norm(total))
    return None if norm == 0.0 else (total / norm).astype(np.float32)


def interacted_items(events: list[dict[str, Any]]) -> set[str]:
    """Items the user did something with (an impression alone is not an interaction)."""
    return {e["item_id"] for e in events if e["type"] != "impression"}


def recommend(reader: IndexReader, events: list[dict[str, Any]], k: int, config: dict[str, Any]) -> Recommendation:
    seen = interacted_items(events)
    profile = taste_vector(events, reader.vectors(seen), config) if seen else None
    if profile is not None:
        hits = reader.nearest(profile, k, exclude=seen)
        if hits:
            return Recommendation(hits, PERSONALIZED)
    return Recommendation(reader.popular(k, exclude=seen), POPULAR)


def similar_items(reader: IndexReader, item_id: str, k: int) -> list[Hit] | None:
    """Items closest to ``item_id``; ``None`` if the item is not in the index."""
    item = reader.get(item_id)
    if item is None:
        return None
    return reader.nearest(item.payload["_vector"], k, exclude=[item_id])
