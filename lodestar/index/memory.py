"""An in-memory index reader over NumPy arrays, with the same interface as the Qdrant Edge reader.

Offline evaluation ranks with exactly the code that serves (``lodestar.recommend``), over a model
fitted on the training split, without building a Qdrant shard for every evaluation. Search is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lodestar.filters import ItemFilter
from lodestar.index import COLLAB, CONTENT, Candidates, Hit


class MemoryIndexReader:
    def __init__(
        self, tenant: str, item_ids: Sequence[str], content: np.ndarray, payloads: Sequence[dict[str, Any]],
        collab: np.ndarray | None = None, version: str = "memory",
    ) -> None:
        self.tenant = tenant
        self.version = version
        self.item_ids = list(item_ids)
        self._index = {item: k for k, item in enumerate(self.item_ids)}
        self._vectors = {CONTENT: np.asarray(content, dtype=np.float32)}
        if collab is not None:
            self._vectors[COLLAB] = np.asarray(collab, dtype=np.float32)
        self._payloads = [{**p, "item_id": i} for p, i in zip(payloads, self.item_ids, strict=True)]
        self._popularity = np.asarray([p.get("popularity", 0.0) for p in self._payloads], dtype=np.float32)

    def _top(self, scores: np.ndarray, k: int, exclude: Iterable[str], with_vectors: bool,
             item_filter: ItemFilter | None = None) -> list[Hit]:
        scores = scores.astype(np.float32, copy=True)
        banned = [self._index[i] for i in exclude if i in self._index]
        scores[banned] = -np.inf
        if item_filter is not None and not item_filter.empty:
            scores[[not item_filter.matches(p) for p in self._payloads]] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        content = self._vectors[CONTENT]
        return [Hit(self.item_ids[t], float(scores[t]), self._payloads[t], content[t] if with_vectors else None)
                for t in top]

    def count(self) -> int:
        return len(self.item_ids)

    def nearest(self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
                with_vectors: bool = False, item_filter: ItemFilter | None = None,
                fields: Sequence[str] = ()) -> list[Hit]:  # every hit carries its whole payload
        scores = self._vectors[using] @ np.asarray(vector, dtype=np.float32)
        return self._top(scores, k, exclude, with_vectors, item_filter)

    def candidates(self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
                   item_filter: ItemFilter | None = None) -> Candidates:
        return Candidates.of_hits(self.nearest(vector, k, exclude, using, item_filter=item_filter))

    def popular(self, k: int, exclude: Iterable[str] = (), item_filter: ItemFilter | None = None) -> list[Hit]:
        return self._top(self._popularity, k, exclude, False, item_filter)

    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        content = self._vectors[CONTENT]
        return {i: content[self._index[i]] for i in item_ids if i in self._index}

    def points(self, item_ids: Iterable[str]) -> dict[str, Hit]:
        return {i: hit for i in item_ids if (hit := self.get(i)) is not None}

    def get(self, item_id: str) -> Hit | None:
        k = self._index.get(item_id)
        return None if k is None else Hit(item_id, 1.0, self._payloads[k], self._vectors[CONTENT][k])

    def close(self) -> None:
        pass
