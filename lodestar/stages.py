"""The steps of a tenant's lineage, as plain functions over files under the tenant's data dir.

Dagster assets call these; tests call them without Dagster. Each returns the numbers the UI shows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lodestar import collab, evaluation, features
from lodestar.cdp import CdpStore, Watermark
from lodestar.collab import CollabModel
from lodestar.embed import Embedder
from lodestar.errors import InvalidInput
from lodestar.index import IndexStore

EXTRACT_COLUMNS = {
    "items": ["id", "kind", "title", "description", "categories", "tags", "attributes", "available", "deleted",
              "source_updated_at", "updated_at"],
    "users": ["id", "attributes", "deleted", "source_updated_at", "updated_at"],
    "events": ["id", "user_id", "item_id", "type", "value", "ts", "recommendation_id", "updated_at"],
}


@dataclass(frozen=True)
class TenantFiles:
    """Where a tenant's pipeline files live under the data dir."""

    root: Path

    def extract(self, entity: str) -> Path:
        return self.root / "extracts" / f"{entity}.parquet"

    @property
    def item_features(self) -> Path:
        return self.root / "features" / "items.parquet"

    @property
    def user_features(self) -> Path:
        return self.root / "features" / "users.parquet"

    @property
    def item_embeddings(self) -> Path:
        return self.root / "embeddings" / "items.parquet"

    @property
    def candidate(self) -> Path:
        return self.root / "index" / "CANDIDATE"

    @property
    def model_candidate(self) -> Path:
        return self.root / "model" / "candidate"

    def manifest(self, version: str) -> Path:
        """Which items (and their fingerprints) index version ``version`` holds."""
        return self.root / "index" / "manifests" / f"{version}.parquet"

    def model(self, version: str) -> Path:
        """The collaborative model frozen beside index version ``version``."""
        return self.root / "models" / version

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation" / "latest.json"


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    tmp.replace(path)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InvalidInput(f"{path} is missing: materialize the upstream asset first")
    return pq.read_table(path).to_pandas()


def read_extract(files: TenantFiles, entity: str) -> pd.DataFrame:
    return _read(files.extract(entity))


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


def extract(store: CdpStore, tenant: str, entity: str, files: TenantFiles, full: bool = False) -> dict[str, Any]:
    """Bring an entity's Parquet extract up to date with the CDP.

    Incremental by default: only rows past the stored ``(updated_at, id)`` watermark are read and
    merged by id (a soft delete arrives as a changed row). ``full`` (or a missing extract) reads
    everything. The events extract also drops the events of users erased since its last run, since
    an erasure deletes events in the CDP, which no watermark can show.
    """
    path = files.extract(entity)
    state_path = path.with_suffix(".state.json")
    state = json.loads(state_path.read_text()) if state_path.is_file() and path.is_file() and not full else {}
    since = Watermark.decode(state["watermark"]) if state.get("watermark") else None
    rows = _read_changes(store, tenant, entity, since)
    delta = _frame(rows, entity)
    incremental = bool(state)
    if incremental:
        current = _read(path)
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
        _write_parquet(df.reset_index(drop=True), path)
    state_path.write_text(json.dumps(state))  # after the data: a crash in between only re-reads a delta
    stats: dict[str, Any] = {"rows": len(df), "changed": len(delta), "mode": "incremental" if incremental else "full",
                             "watermark": state.get("watermark"), "path": str(path)}
    if "deleted" in df:
        stats["deleted"] = int(df["deleted"].sum())
    if entity == "events":
        stats["erased"] = erased
    return stats


def item_features(files: TenantFiles, config: dict[str, Any], model: str) -> dict[str, Any]:
    items = _read(files.extract("items"))
    events = _read(files.extract("events"))
    df = features.build_item_features(
        items, events, config["event_weights"], float(config["recency_half_life_days"]), model
    )
    previous = (set(pq.read_table(files.item_features, columns=["content_hash"]).column("content_hash").to_pylist())
                if files.item_features.is_file() else set())
    _write_parquet(df, files.item_features)
    live = df[df["available"] & ~df["deleted"]] if not df.empty else df
    return {"rows": len(df), "indexable": len(live), "with_interactions": int((df["interactions"] > 0).sum()),
            "new_texts": int((~live["content_hash"].isin(previous)).sum()) if not live.empty else 0}


def user_features(files: TenantFiles) -> dict[str, Any]:
    users = _read(files.extract("users"))
    events = _read(files.extract("events"))
    items = _read(files.extract("items"))
    df = features.build_user_features(users, events, items)
    _write_parquet(df, files.user_features)
    return {"rows": len(df), "active": int((df["events"] > 0).sum())}


def item_embeddings(
    files: TenantFiles, embedder: Embedder, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Embed every live item (available, not deleted); unchanged texts come from the cache."""
    feats = _read(files.item_features)
    live = feats[feats["available"] & ~feats["deleted"]].reset_index(drop=True) if not feats.empty else feats
    vectors, stats = embedder.embed(list(live["text"]) if not live.empty else [], progress)
    dim = embedder.dimension
    table = pa.table({
        "id": pa.array(list(live["id"]) if not live.empty else [], pa.string()),
        "content_hash": pa.array(list(live["content_hash"]) if not live.empty else [], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    })
    files.item_embeddings.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, files.item_embeddings)
    return {"rows": len(live), "dimension": dim, "encoded": stats.encoded, "cached": stats.cached,
            "model": embedder.model_name, "problems": embedding_problems(vectors.reshape(len(live), dim), dim)}


def _embedding_hashes(files: TenantFiles) -> tuple[list[str], list[str]]:
    table = pq.read_table(files.item_embeddings, columns=["id", "content_hash"])
    return table.column("id").to_pylist(), table.column("content_hash").to_pylist()


def read_embeddings(files: TenantFiles) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(files.item_embeddings)
    ids = table.column("id").to_pylist()
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), dim) if ids else np.zeros((0, dim))
    return ids, vectors.astype(np.float32)


def embedding_problems(vectors: np.ndarray, expected_dim: int) -> list[str]:
    """What is wrong with a matrix of embeddings (empty list when fine)."""
    problems = []
    if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != expected_dim):
        problems.append(f"dimension is {vectors.shape[-1] if vectors.ndim == 2 else vectors.shape}, expected {expected_dim}")
    nan_rows = int(np.isnan(vectors).any(axis=1).sum()) if vectors.ndim == 2 and len(vectors) else 0
    if nan_rows:
        problems.append(f"{nan_rows} vectors contain NaN")
    return problems


def _item_payloads(feats: pd.DataFrame, ids: list[str]) -> list[dict[str, Any]]:
    """The index payload of each item of ``ids`` (column-wise: a row lookup per item costs seconds at 100k)."""
    rows = feats.set_index("id").loc[ids, ["kind", "title", "categories", "tags", "attributes", "popularity"]]
    return [
        {"kind": kind, "title": title, "categories": list(categories), "tags": list(tags),
         "attributes": json.loads(attributes), "popularity": float(popularity)}
        for kind, title, categories, tags, attributes, popularity in zip(
            rows["kind"], rows["title"], rows["categories"], rows["tags"], rows["attributes"], rows["popularity"],
            strict=True)
    ]


def _fingerprint(content_hash: str, payload: dict[str, Any], collab_vector: np.ndarray | None) -> str:
    """What a point of the index is made of: equal fingerprints, equal points."""
    digest = hashlib.sha1(content_hash.encode())
    digest.update(json.dumps(payload, sort_keys=True).encode())
    if collab_vector is not None:
        digest.update(np.ascontiguousarray(collab_vector, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _read_manifest(files: TenantFiles, version: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    meta_path = files.manifest(version).with_suffix(".json")
    if not meta_path.is_file() or not files.manifest(version).is_file():
        return None
    table = pq.read_table(files.manifest(version))
    return json.loads(meta_path.read_text()), dict(zip(table.column("id").to_pylist(),
                                                       table.column("fingerprint").to_pylist(), strict=True))


def _write_manifest(files: TenantFiles, version: str, meta: dict[str, Any], fingerprints: dict[str, str]) -> None:
    path = files.manifest(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(fingerprints), "fingerprint": list(fingerprints.values())}), path)
    path.with_suffix(".json").write_text(json.dumps(meta))


def _plan(
    index_store: IndexStore, files: TenantFiles, tenant: str, meta: dict[str, Any], fingerprints: dict[str, str],
    max_fraction: float, full: bool,
) -> tuple[str | None, list[str], list[str], str]:
    """Whether to start from the published version: ``(base, upserts, deletes, why)``; ``base`` is
    ``None`` for a full build (``upserts`` then lists every item)."""
    everything = list(fingerprints)
    published = index_store.published(tenant)
    previous = _read_manifest(files, published) if published else None
    if full:
        return None, everything, [], "full rebuild requested"
    if previous is None:
        return None, everything, [], "no published version to start from"
    old_meta, old = previous
    if old_meta != meta:
        changed = [k for k in meta if old_meta.get(k) != meta[k]]
        return None, everything, [], f"{', '.join(changed)} changed since the published version"
    upserts = [i for i, fp in fingerprints.items() if old.get(i) != fp]
    deletes = [i for i in old if i not in fingerprints]
    share = _changed_share(old, fingerprints)
    if share > max_fraction:
        return None, everything, [], f"{share:.1%} of items changed (more than {max_fraction:.0%})"
    return published, upserts, deletes, f"{len(upserts)} changed and {len(deletes)} removed items ({share:.2%})"


def build_index(
    files: TenantFiles, index_store: IndexStore, tenant: str, config: dict[str, Any] | None = None, full: bool = False,
) -> tuple[dict[str, Any], tuple[str, np.ndarray]]:
    """Build a new, unpublished index version from the embeddings, item features and model.

    When the collaborative model and vector sizes are those of the published version and at most
    ``index.incremental_max_fraction`` of the items changed (text, payload or collab vector), the
    version starts as a copy of the published one and only the changed and removed items are
    applied; otherwise every item is written into an empty version.
    """
    ids, vectors = read_embeddings(files)
    if not ids:
        raise InvalidInput(f"tenant {tenant!r} has no available items to index: import items first")
    hashes = dict(zip(*_embedding_hashes(files), strict=True))
    payloads = _item_payloads(_read(files.item_features), ids)
    model = CollabModel.load(files.model_candidate) if (files.model_candidate / "meta.json").is_file() else None
    collab_vectors = None if model is None else model.factors_for(ids)
    fingerprints = {
        item_id: _fingerprint(hashes[item_id], payloads[row], None if collab_vectors is None else collab_vectors[row])
        for row, item_id in enumerate(ids)
    }
    collab_dimension = 0 if model is None else int(model.factors.shape[1])
    meta = {"dimension": int(vectors.shape[1]), "collab_dimension": collab_dimension,
            "model": (model.meta or {}).get("fingerprint", "none") if model else "none"}
    max_fraction = float((config or {}).get("index", {}).get("incremental_max_fraction", 0.1))
    base, upserts, deletes, why = _plan(index_store, files, tenant, meta, fingerprints, max_fraction, full)
    builder = index_store.build(tenant, vectors.shape[1], collab_dimension, base=base)
    rows = {item_id: row for row, item_id in enumerate(ids)}
    for start in range(0, len(upserts), 4096):
        chunk = [rows[i] for i in upserts[start:start + 4096]]
        builder.upsert([ids[r] for r in chunk], vectors[chunk], [payloads[r] for r in chunk],
                       None if collab_vectors is None else collab_vectors[chunk])
    if deletes:
        builder.delete(deletes)
    points = builder.finish()
    _write_manifest(files, builder.version, meta, fingerprints)
    if model is not None:
        # Frozen with the version, so a server swaps index and model together.
        shutil.copytree(files.model_candidate, files.model(builder.version), dirs_exist_ok=True)
    files.candidate.parent.mkdir(parents=True, exist_ok=True)
    files.candidate.write_text(json.dumps({"version": builder.version, "points": points, "items": len(ids)}))
    stats = {"version": builder.version, "points": points, "items": len(ids), "dimension": int(vectors.shape[1]),
             "collab_model": model.kind if model else "none", "mode": "incremental" if base else "full",
             "base_version": base or "", "upserted": len(upserts), "deleted": len(deletes), "why": why}
    probe_row = rows[upserts[0]] if upserts else 0
    return stats, (ids[probe_row], vectors[probe_row])


def candidate(files: TenantFiles) -> dict[str, Any]:
    if not files.candidate.is_file():
        raise InvalidInput("no index version has been built: materialize tenant_index first")
    return json.loads(files.candidate.read_text())


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


def publish(files: TenantFiles, index_store: IndexStore, tenant: str) -> dict[str, Any]:
    built = candidate(files)
    previous = index_store.published(tenant)
    info: dict[str, Any] = {"points": built["points"]}
    evaluation = read_evaluation(files)
    if evaluation.get("status") == "evaluated":
        info["ndcg@10"] = evaluation["lodestar"]["ndcg@10"]
    index_store.publish(tenant, built["version"], info)
    dropped = index_store.drop_old(tenant)
    for version in dropped:
        shutil.rmtree(files.model(version), ignore_errors=True)
        files.manifest(version).unlink(missing_ok=True)
        files.manifest(version).with_suffix(".json").unlink(missing_ok=True)
    return {"version": built["version"], "previous": previous, "points": built["points"], "dropped": dropped}


def collab_model(files: TenantFiles, config: dict[str, Any]) -> dict[str, Any]:
    """Fit the tenant's collaborative model on all positive interactions, skipped when they and the
    model settings are those of the current model.

    The model covers every item users engaged with, indexed or not: an item that went out of stock
    still tells what its buyers like, and removing it from the catalog leaves the model (and the
    collab vectors of every other item) unchanged, so the index can be updated incrementally.
    """
    events = _read(files.extract("events"))
    pairs = collab.positive_interactions(events, config["event_weights"])
    fingerprint = collab.fingerprint(pairs, config)
    meta_path = files.model_candidate / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            return {**meta, "refit": False}
    model = collab.fit(pairs, sorted(pd.unique(pairs["item_id"])), config)
    model.meta = {**(model.meta or {}), "fingerprint": fingerprint}
    shutil.rmtree(files.model_candidate, ignore_errors=True)
    model.save(files.model_candidate)
    return {"kind": model.kind, **model.meta, "refit": True}


def read_evaluation(files: TenantFiles) -> dict[str, Any]:
    return json.loads(files.evaluation.read_text()) if files.evaluation.is_file() else {}


def _changed_share(old: dict[str, str], new: dict[str, str]) -> float:
    """Share of items added, removed or changed between two id -> fingerprint maps."""
    changed = sum(1 for i, fp in new.items() if old.get(i) != fp) + sum(1 for i in old if i not in new)
    return changed / max(len(new), 1)


def offline_evaluation(files: TenantFiles, config: dict[str, Any], tenant: str) -> dict[str, Any]:
    """Evaluate the served ranking on a temporal holdout of the tenant's events (see
    ``lodestar.evaluation``) and keep the result for the publish gate.

    The kept result stands (``reused``) when the events and the configuration are those it was
    computed on and at most ``index.incremental_max_fraction`` of the embedded items changed since:
    the holdout is made of interactions, and a small catalog edit moves it by noise only.
    """
    ids, hashes = _embedding_hashes(files)
    items = dict(zip(ids, hashes, strict=True))
    events = _read(files.extract("events"))
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode())
    columns = [c for c in ("user_id", "item_id", "type", "value", "ts") if c in events]
    digest.update(pd.util.hash_pandas_object(events.sort_values("id")[columns], index=False).to_numpy().tobytes())
    inputs = digest.hexdigest()
    previous = read_evaluation(files)
    items_path = files.evaluation.with_name("items.parquet")
    if previous.get("inputs") == inputs and items_path.is_file():
        table = pq.read_table(items_path)
        share = _changed_share(dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist(),
                                        strict=True)), items)
        if share <= float(config["index"]["incremental_max_fraction"]):
            return {**previous, "reused": True, "items_changed_since": share}
    _, vectors = read_embeddings(files)
    result = {**evaluation.evaluate_tenant(events, ids, vectors, config, tenant), "inputs": inputs}
    files.evaluation.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "content_hash": hashes}), items_path)
    files.evaluation.write_text(json.dumps(result))
    return {**result, "reused": False, "items_changed_since": 0.0}


def regression_problem(result: dict[str, Any], published: dict[str, Any] | None, max_regression: float) -> str | None:
    """Why a new version must not replace the published one (``None`` when it may)."""
    if result.get("status") != "evaluated" or not published or "ndcg@10" not in published:
        return None
    new, old = result["lodestar"]["ndcg@10"], float(published["ndcg@10"])
    if new < old * (1.0 - max_regression):
        return (f"NDCG@10 {new:.4f} is more than {max_regression:.0%} below the published version's {old:.4f} "
                f"({published.get('version', '?')}); the published version keeps serving. Check the latest "
                "import, or raise evaluation.max_regression in the tenant configuration to accept it.")
    return None
