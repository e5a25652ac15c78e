"""Item embeddings: a vector per indexable item, unchanged texts from the content-hash cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lodestar.embed import Embedder
from lodestar.lineage.feature_tables import indexable, read_item_features
from lodestar.lineage.files import TenantFiles, write_table


@dataclass(frozen=True)
class EmbeddingsResult:
    rows: int
    dimension: int
    encoded: int
    cached: int
    model: str
    problems: list[str] = field(default_factory=list)  # what the dimension_and_nan check reports


def item_embeddings(
    files: TenantFiles, embedder: Embedder, progress: Callable[[int, int], None] | None = None
) -> EmbeddingsResult:
    """Embed every indexable item (available, not deleted); unchanged texts come from the cache."""
    live = indexable(read_item_features(files))
    vectors, stats = embedder.embed(list(live["text"]) if not live.empty else [], progress)
    dim = embedder.dimension
    table = pa.table({
        "id": pa.array(list(live["id"]) if not live.empty else [], pa.string()),
        "content_hash": pa.array(list(live["content_hash"]) if not live.empty else [], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    })
    write_table(table, files.item_embeddings)
    return EmbeddingsResult(rows=len(live), dimension=dim, encoded=stats.encoded, cached=stats.cached,
                            model=embedder.model_name, problems=embedding_problems(vectors.reshape(len(live), dim), dim))


def embedding_hashes(files: TenantFiles) -> dict[str, str]:
    """Item id -> content hash of the embedded items."""
    table = pq.read_table(files.item_embeddings, columns=["id", "content_hash"])
    return dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist(), strict=True))


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
