"""The vector index port: per-tenant immutable versions, published atomically, opened read-only.

Points carry the item's payload (title, categories, tags, attributes, popularity); their ids are
``uuid5(tenant, item id)`` so a rebuild is idempotent.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lodestar.filters import ItemFilter
from lodestar.settings import Settings

_NAMESPACE = uuid.UUID("6f1c3c52-52a4-4f43-9d0e-5a7f6b1f4c11")


def point_id(tenant: str, item_id: str) -> str:
    """Deterministic point id of an item of a tenant."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}/{item_id}"))


CONTENT = "content"  # named vector: the item's text embedding (cosine)
COLLAB = "collab"  # named vector: the item's collaborative factors (dot product)


@dataclass
class Hit:
    item_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # the content vector, when asked for


class IndexBuilder(Protocol):
    version: str

    def upsert(
        self, item_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]],
        collab: np.ndarray | None = None,
    ) -> None: ...
    def delete(self, item_ids: Sequence[str]) -> None: ...
    def finish(self) -> int:
        """Flush and optimize; return the number of points. The version stays unpublished."""
        ...


class IndexReader(Protocol):
    tenant: str
    version: str

    def count(self) -> int: ...
    def nearest(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        with_vectors: bool = False, item_filter: ItemFilter | None = None,
    ) -> list[Hit]: ...
    def popular(self, k: int, exclude: Iterable[str] = (), item_filter: ItemFilter | None = None) -> list[Hit]: ...
    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]: ...
    def get(self, item_id: str) -> Hit | None: ...
    def close(self) -> None: ...


class IndexStore(Protocol):
    def build(self, tenant: str, dimension: int, collab_dimension: int = 0, base: str | None = None) -> IndexBuilder:
        """A new unpublished version, empty or starting with every point of version ``base``."""
        ...
    def publish(self, tenant: str, version: str, info: dict[str, Any] | None = None) -> None: ...
    def published(self, tenant: str) -> str | None: ...
    def open(self, tenant: str, version: str) -> IndexReader: ...
    def versions(self, tenant: str) -> list[str]: ...
    def drop_old(self, tenant: str, keep: int = 2) -> list[str]: ...


def open_index_store(settings: Settings) -> IndexStore:
    """The index adapter the settings choose: a Qdrant server when ``LODESTAR_QDRANT_URL`` is set
    (layout from ``LODESTAR_QDRANT_MODE``), else Qdrant Edge shards under the data dir."""
    if settings.qdrant_url:
        from lodestar.index.qdrant_server import QdrantIndexStore

        return QdrantIndexStore(_client(settings.qdrant_url, settings.qdrant_api_key), settings.qdrant_mode)
    from lodestar.index.edge import EdgeIndexStore

    return EdgeIndexStore(settings.data_dir)


@functools.lru_cache(maxsize=4)
def _client(url: str, api_key: str | None):
    """One client per process and URL (local mode allows one client per path)."""
    from lodestar.index.qdrant_server import client_for

    return client_for(url, api_key)
