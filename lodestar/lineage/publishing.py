"""Checking a built index version with a canary query, and publishing it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lodestar.index import IndexStore
from lodestar.lineage.evaluation_gate import read_evaluation
from lodestar.lineage.files import TenantFiles
from lodestar.lineage.index_build import candidate, drop_manifest


@dataclass(frozen=True)
class PublishResult:
    version: str
    previous: str | None
    points: int
    dropped: list[str]


def canary_problem(index_store: IndexStore, tenant: str, version: str, probe: tuple[str, np.ndarray]) -> str | None:
    """Open a built version read-only and ask it for an item's own neighbours; ``None`` when it answers."""
    item_id, vector = probe
    reader = index_store.open(tenant, version)
    try:
        hits = reader.nearest(vector, 1)
    finally:
        reader.close()
    if not hits:
        return "a nearest-neighbour query returned nothing"
    # An item's own vector must come back with cosine ~1 (another item with the same text may tie).
    if hits[0].score < 0.99:
        return f"the nearest neighbour of item {item_id!r}'s own vector scored {hits[0].score:.3f}, expected ~1"
    return None


def publish(files: TenantFiles, index_store: IndexStore, tenant: str) -> PublishResult:
    """Serve the last built version (with its evaluation in its record), then drop old versions."""
    built = candidate(files)
    previous = index_store.published(tenant)
    info: dict[str, float] = {"points": built["points"]}
    evaluation = read_evaluation(files)
    if evaluation.get("status") == "evaluated":
        info["ndcg@10"] = evaluation["lodestar"]["ndcg@10"]
        info["popularity_ndcg@10"] = evaluation["popular"]["ndcg@10"]
        info["test_users"] = evaluation["test_users"]
    index_store.publish(tenant, built["version"], info)
    dropped = index_store.drop_old(tenant)
    for version in dropped:
        drop_manifest(files, version)
    return PublishResult(version=built["version"], previous=previous, points=built["points"], dropped=dropped)
