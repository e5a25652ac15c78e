"""Building a new, unpublished index version: payloads, fingerprints, manifests, the incremental plan."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lodestar.errors import InvalidInput
from lodestar.index import IndexStore
from lodestar.lineage.collab_fit import candidate_model
from lodestar.lineage.embeddings import embedding_hashes, read_embeddings
from lodestar.lineage.feature_tables import read_item_features
from lodestar.lineage.files import TenantFiles
from lodestar.tenant_config import TenantConfig

BATCH = 4096


@dataclass(frozen=True)
class IndexBuildResult:
    version: str
    points: int
    items: int
    dimension: int
    collab_model: str  # "ease", "svd" or "none"
    mode: str  # "full" or "incremental"
    base_version: str  # the published version an incremental build started from ("" for a full one)
    upserted: int
    deleted: int
    why: str  # why full or incremental, in the user's words
    probe: tuple[str, np.ndarray]  # an item written by this build and its vector, for the canary query

    def metadata(self) -> dict[str, Any]:
        """Everything but the probe, for the UI."""
        return {k: v for k, v in self.__dict__.items() if k != "probe"}


@dataclass(frozen=True)
class _Plan:
    base: str | None  # None: a full build (upserts then lists every item)
    upserts: list[str]
    deletes: list[str]
    why: str


# The layout of index versions: a version of another format is never the base of an incremental
# build (2: Edge versions open cold and carry their content vectors beside them; 3: Edge versions
# name their points by number, lodestar.index.point_number, so each tenant's next build is full).
INDEX_FORMAT = 3


def item_payloads(feats: pd.DataFrame, ids: list[str]) -> list[dict[str, Any]]:
    """The index payload of each item of ``ids`` (column-wise: a row lookup per item costs seconds at 100k)."""
    rows = feats.set_index("id").loc[ids, ["kind", "title", "categories", "tags", "attributes", "popularity"]]
    return [
        {"kind": kind, "title": title, "categories": list(categories), "tags": list(tags),
         "attributes": json.loads(attributes), "popularity": float(popularity)}
        for kind, title, categories, tags, attributes, popularity in zip(
            rows["kind"], rows["title"], rows["categories"], rows["tags"], rows["attributes"], rows["popularity"],
            strict=True)
    ]


def fingerprint(content_hash: str, payload: dict[str, Any], collab_vector: np.ndarray | None) -> str:
    """What a point of the index is made of: equal fingerprints, equal points."""
    digest = hashlib.sha1(content_hash.encode())
    digest.update(json.dumps(payload, sort_keys=True).encode())
    if collab_vector is not None:
        digest.update(np.ascontiguousarray(collab_vector, dtype=np.float32).tobytes())
    return digest.hexdigest()


def changed_share(old: dict[str, str], new: dict[str, str]) -> float:
    """Share of items added, removed or changed between two id -> fingerprint (or hash) maps."""
    changed = sum(1 for i, fp in new.items() if old.get(i) != fp) + sum(1 for i in old if i not in new)
    return changed / max(len(new), 1)


def read_manifest(files: TenantFiles, version: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """A version's build settings and its items' fingerprints (``None`` when it was not kept)."""
    if not files.manifest_meta(version).is_file() or not files.manifest(version).is_file():
        return None
    table = pq.read_table(files.manifest(version))
    return json.loads(files.manifest_meta(version).read_text()), dict(
        zip(table.column("id").to_pylist(), table.column("fingerprint").to_pylist(), strict=True))


def write_manifest(files: TenantFiles, version: str, meta: dict[str, Any], fingerprints: dict[str, str]) -> None:
    path = files.manifest(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(fingerprints), "fingerprint": list(fingerprints.values())}), path)
    files.manifest_meta(version).write_text(json.dumps(meta))


def drop_manifest(files: TenantFiles, version: str) -> None:
    files.manifest(version).unlink(missing_ok=True)
    files.manifest_meta(version).unlink(missing_ok=True)


def _plan(
    index_store: IndexStore, files: TenantFiles, tenant: str, meta: dict[str, Any], fingerprints: dict[str, str],
    max_fraction: float, full: bool,
) -> _Plan:
    """Whether to start from the published version, and what to write."""
    everything = list(fingerprints)
    published = index_store.published(tenant)
    previous = read_manifest(files, published) if published else None
    if full:
        return _Plan(None, everything, [], "full rebuild requested")
    if previous is None:
        return _Plan(None, everything, [], "no published version to start from")
    old_meta, old = previous
    if old_meta != meta:
        changed = [k for k in meta if old_meta.get(k) != meta[k]]
        return _Plan(None, everything, [], f"{', '.join(changed)} changed since the published version")
    upserts = [i for i, fp in fingerprints.items() if old.get(i) != fp]
    deletes = [i for i in old if i not in fingerprints]
    share = changed_share(old, fingerprints)
    if share > max_fraction:
        return _Plan(None, everything, [], f"{share:.1%} of items changed (more than {max_fraction:.0%})")
    return _Plan(published, upserts, deletes, f"{len(upserts)} changed and {len(deletes)} removed items ({share:.2%})")


def build_index(
    files: TenantFiles, index_store: IndexStore, tenant: str, config: TenantConfig | None = None, full: bool = False,
) -> IndexBuildResult:
    """Build a new, unpublished index version from the embeddings, item features and model.

    When the collaborative model and vector sizes are those of the published version and at most
    ``index.incremental_max_fraction`` of the items changed (text, payload or collab vector), the
    version starts as a copy of the published one and only the changed and removed items are
    applied; otherwise every item is written into an empty version. The model is attached to the
    version, so servers open both together.
    """
    config = config or TenantConfig()
    ids, vectors = read_embeddings(files)
    if not ids:
        raise InvalidInput(f"tenant {tenant!r} has no available items to index: import items first")
    hashes = embedding_hashes(files)
    payloads = item_payloads(read_item_features(files), ids)
    model = candidate_model(files)
    collab_vectors = None if model is None else model.factors_for(ids)
    fingerprints = {
        item_id: fingerprint(hashes[item_id], payloads[row], None if collab_vectors is None else collab_vectors[row])
        for row, item_id in enumerate(ids)
    }
    collab_dimension = 0 if model is None else int(model.factors.shape[1])
    meta = {"format": INDEX_FORMAT, "dimension": int(vectors.shape[1]), "collab_dimension": collab_dimension,
            "model": (model.meta or {}).get("fingerprint", "none") if model else "none"}
    plan = _plan(index_store, files, tenant, meta, fingerprints, config.index.incremental_max_fraction, full)
    if plan.base and not plan.upserts and not plan.deletes:
        # Nothing changed: the published version is the candidate again (no copy, no new version
        # for servers to swap to, and nothing to drop).
        _write_candidate(files, plan.base, len(ids), len(ids))
        return IndexBuildResult(
            version=plan.base, points=len(ids), items=len(ids), dimension=int(vectors.shape[1]),
            collab_model=model.kind if model else "none", mode="unchanged", base_version=plan.base, upserted=0,
            deleted=0, why="nothing changed since the published version, which stays", probe=(ids[0], vectors[0]),
        )
    builder = index_store.build(tenant, vectors.shape[1], collab_dimension, base=plan.base)
    rows = {item_id: row for row, item_id in enumerate(ids)}
    for start in range(0, len(plan.upserts), BATCH):
        chunk = [rows[i] for i in plan.upserts[start:start + BATCH]]
        builder.upsert([ids[r] for r in chunk], vectors[chunk], [payloads[r] for r in chunk],
                       None if collab_vectors is None else collab_vectors[chunk])
    if plan.deletes:
        builder.delete(plan.deletes)
    if model is not None:
        builder.attach_model(model)  # frozen with the version: a server swaps index and model together
    points = builder.finish()
    write_manifest(files, builder.version, meta, fingerprints)
    _write_candidate(files, builder.version, points, len(ids))
    probe_row = rows[plan.upserts[0]] if plan.upserts else 0
    return IndexBuildResult(
        version=builder.version, points=points, items=len(ids), dimension=int(vectors.shape[1]),
        collab_model=model.kind if model else "none", mode="incremental" if plan.base else "full",
        base_version=plan.base or "", upserted=len(plan.upserts), deleted=len(plan.deletes), why=plan.why,
        probe=(ids[probe_row], vectors[probe_row]),
    )


def _write_candidate(files: TenantFiles, version: str, points: int, items: int) -> None:
    files.candidate.parent.mkdir(parents=True, exist_ok=True)
    files.candidate.write_text(json.dumps({"version": version, "points": points, "items": items}))


def candidate(files: TenantFiles) -> dict[str, Any]:
    """The last built version: ``version``, ``points``, ``items``."""
    if not files.candidate.is_file():
        raise InvalidInput("no index version has been built: materialize tenant_index first")
    return json.loads(files.candidate.read_text())
