"""The vector index port: per-tenant immutable versions, published atomically, opened read-only.

Points carry the item's payload (title, categories, tags, attributes, popularity); their ids are
``uuid5(tenant, item id)`` so a rebuild is idempotent. A version also holds the collaborative model
it was built with (:meth:`IndexBuilder.attach_model`): :meth:`IndexStore.open_published` returns
the index and its model together, so a server swaps both at once and never needs the pipeline's files.

What both Qdrant adapters share is defined here once: payload index fields, the version name and
the conversion of query results; the translation of an :class:`ItemFilter` into Qdrant conditions
is :mod:`lodestar.index.qdrant_filters`.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lodestar.collab import CollabModel
from lodestar.errors import NotFound
from lodestar.filters import ATTRIBUTE_NAME, ItemFilter
from lodestar.settings import Settings

_NAMESPACE = uuid.UUID("6f1c3c52-52a4-4f43-9d0e-5a7f6b1f4c11")


@functools.lru_cache(maxsize=1 << 16)
def point_id(tenant: str, item_id: str) -> str:
    """Deterministic point id of an item of a tenant (cached: every request excludes the user's
    items by point id, and a uuid5 costs microseconds each)."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}/{item_id}"))


def point_uuids(tenant: str, item_ids: Iterable[str]) -> list[uuid.UUID]:
    """:func:`point_uuid` of many items at once, past the caches (a whole catalog would only churn
    them: a version's 100,000 items take 0.25 s this way and about a second through the caches)."""
    return [uuid.uuid5(_NAMESPACE, f"{tenant}/{item_id}") for item_id in item_ids]


@functools.lru_cache(maxsize=1 << 16)
def point_uuid(tenant: str, item_id: str) -> uuid.UUID:
    """:func:`point_id` as a UUID object (the engine takes those about twice as fast as strings)."""
    return uuid.UUID(point_id(tenant, item_id))


@functools.lru_cache(maxsize=1 << 16)
def point_number(tenant: str, item_id: str) -> int:
    """The item's point id as an unsigned 64-bit number: the first 64 bits of :func:`point_id`'s
    uuid5, as deterministic (a rebuild is idempotent). Qdrant takes unsigned 64-bit ids as well as
    UUIDs, and hands a number back to Python as an ``int``, where qdrant-edge-py makes a
    ``uuid.UUID`` of every UUID id it returns: 150 µs for a query's 300 candidates on this
    machine, more than the query (89-244 µs), against 12 µs for numbers. Two items of a tenant share
    a number with a chance of about n² / 2^65 (10^-9 at 200,000 items); a version that would hold
    such a pair is refused when it is written (:class:`lodestar.index.edge.EdgeIndexBuilder`)."""
    return uuid.uuid5(_NAMESPACE, f"{tenant}/{item_id}").int >> 64


def point_numbers(tenant: str, item_ids: Iterable[str]) -> list[int]:
    """:func:`point_number` of many items at once, past the cache (as :func:`point_uuids`)."""
    return [uuid.uuid5(_NAMESPACE, f"{tenant}/{item_id}").int >> 64 for item_id in item_ids]


def unknown_version(tenant: str, version: str) -> NotFound:
    """The error for an index version a tenant does not have."""
    return NotFound(f"index version {version!r} of tenant {tenant!r} does not exist")


def new_version() -> str:
    """A new version name: sortable by creation time (microseconds, UTC), and valid as a directory
    and a Qdrant collection name; the random suffix keeps concurrent builds apart."""
    now = time.time()
    return f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}_{int(now * 1e6) % 1_000_000:06d}-{uuid.uuid4().hex[:4]}"


CONTENT = "content"  # named vector: the item's text embedding (cosine)
COLLAB = "collab"  # named vector: the item's collaborative factors (dot product)

@dataclass
class Hit:
    item_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # the content vector, when asked for


@dataclass(frozen=True, eq=False)
class Candidates:
    """A candidate query's answer as arrays, best first: what ranking reads of hundreds of
    candidates (their ids and popularity; the engine's scores too), without a :class:`Hit` and a
    payload dict for each. The edge adapter makes it from its sidecar; the others from hits."""

    item_ids: list[str]
    scores: np.ndarray  # the engine's similarity, float64
    popularity: np.ndarray  # float64

    @classmethod
    def of_hits(cls, hits: Sequence[Hit]) -> Candidates:
        return cls([h.item_id for h in hits], np.asarray([h.score for h in hits], dtype=np.float64),
                   np.asarray([float(h.payload.get(POPULARITY, 0.0)) for h in hits], dtype=np.float64))

    def hits(self) -> list[Hit]:
        """The candidates as hits carrying ``CANDIDATE_FIELDS`` (the inverse of :meth:`of_hits`)."""
        return [Hit(item_id, float(score), {"item_id": item_id, POPULARITY: float(popularity)})
                for item_id, score, popularity in zip(self.item_ids, self.scores, self.popularity, strict=True)]

    def __len__(self) -> int:
        return len(self.item_ids)


# Payload indexes every version gets before its upload, and what a query result carries (enough to
# rank and to answer: converting whole payloads costs time). Both adapters use these.
KEYWORD_FIELDS = ("item_id", "kind", "categories", "tags")
FLOAT_FIELDS = ("popularity",)
RESULT_FIELDS = ["item_id", "title", "popularity", "categories", "tags", "attributes"]
# What a candidate needs before it is ranked (its full payload is read for the head only).
CANDIDATE_FIELDS = ["item_id", "popularity"]
MAX_ATTRIBUTE_INDEXES = 16


def common_attributes(payloads: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(key, "float" | "keyword")`` for the attributes at least 20% of the items carry (up to
    ``MAX_ATTRIBUTE_INDEXES``, one type per key: the more common one), most common first: the
    attributes worth a payload index so that filters on them do not scan payloads."""
    counts: dict[tuple[str, str], int] = {}
    for payload in payloads:
        for key, value in (payload.get("attributes") or {}).items():
            if not ATTRIBUTE_NAME.match(key):
                continue  # not addressable by a filter, so not worth an index (nor valid as a path)
            kind = "float" if isinstance(value, (int, float)) and not isinstance(value, bool) else (
                "keyword" if isinstance(value, str) else None)
            if kind:
                counts[(key, kind)] = counts.get((key, kind), 0) + 1
    common = sorted((c, k) for k, c in counts.items() if c >= 0.2 * len(payloads))[-MAX_ATTRIBUTE_INDEXES:]
    out: dict[str, str] = {}
    for _, (key, kind) in reversed(common):
        out.setdefault(key, kind)
    return list(out.items())


def check_collab(collab: np.ndarray | None, count: int, dimension: int) -> None:
    if dimension and (collab is None or collab.shape != (count, dimension)):
        raise ValueError(f"collab vectors must have shape ({count}, {dimension})")


def versions_to_drop(versions: Sequence[str], published: str | None, keep: int) -> list[str]:
    """Versions older than the published one, but the ``keep`` newest of them (a server may still be
    reading one). Never the published version or a newer one (a build may be in progress)."""
    if published is None:
        return []
    older = [v for v in versions if v < published]
    return older[: max(0, len(older) - keep)]


def to_hits(points: Iterable[Any], score_field: str | None = None) -> list[Hit]:
    """Qdrant query results (Edge or client: both have ``payload``, ``score``, named ``vector``) as
    hits. ``score_field``: score each hit by that payload field instead (an order-by query, such as
    popularity, has no similarity score)."""
    def content(p: Any) -> np.ndarray | None:
        if isinstance(p.vector, dict) and CONTENT in p.vector:
            return np.asarray(p.vector[CONTENT], dtype=np.float32)
        return None

    def score(p: Any) -> float:
        return float(p.payload.get(score_field, 0.0)) if score_field else float(p.score)

    return [Hit(p.payload["item_id"], score(p), dict(p.payload), content(p)) for p in points]


POPULARITY = "popularity"


@dataclass(frozen=True)
class PublishedVersion:
    """An opened index version and the collaborative model built with it (``None`` without one)."""

    reader: IndexReader
    model: CollabModel | None
    record: dict[str, Any]

    @property
    def version(self) -> str:
        return self.reader.version

    def close(self) -> None:
        self.reader.close()


class IndexBuilder(Protocol):
    version: str

    def upsert(
        self, item_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]],
        collab: np.ndarray | None = None,
    ) -> None: ...
    def delete(self, item_ids: Sequence[str]) -> None: ...
    def attach_model(self, model: CollabModel) -> None:
        """Keep the collaborative model with this version (opened with it by ``open_published``)."""
        ...
    def finish(self) -> int:
        """Flush and optimize; return the number of points. The version stays unpublished."""
        ...


class IndexReader(Protocol):
    tenant: str
    version: str

    def count(self) -> int: ...
    def nearest(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        with_vectors: bool = False, item_filter: ItemFilter | None = None, fields: Sequence[str] = RESULT_FIELDS,
    ) -> list[Hit]:
        """The ``k`` nearest items; ``fields``: the payload fields each hit carries."""
        ...
    def candidates(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        item_filter: ItemFilter | None = None,
    ) -> Candidates:
        """:meth:`nearest` with ``CANDIDATE_FIELDS``, as arrays."""
        ...
    def popular(self, k: int, exclude: Iterable[str] = (), item_filter: ItemFilter | None = None) -> list[Hit]: ...
    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]: ...
    def points(self, item_ids: Iterable[str]) -> dict[str, Hit]:
        """Items by id, each with its result payload and content vector (missing ids left out)."""
        ...
    def get(self, item_id: str) -> Hit | None: ...
    def close(self) -> None: ...


class IndexStore(Protocol):
    def build(self, tenant: str, dimension: int, collab_dimension: int = 0, base: str | None = None) -> IndexBuilder:
        """A new unpublished version, empty or starting with every point of version ``base``."""
        ...
    def publish(self, tenant: str, version: str, info: dict[str, Any] | None = None) -> None:
        """Make ``version`` the served one in one atomic step; ``info`` is kept in its record."""
        ...
    def published(self, tenant: str) -> str | None:
        """The served version's name (cheap: servers poll it)."""
        ...
    def published_record(self, tenant: str) -> dict[str, Any] | None:
        """The served version's record: ``version``, ``published_at`` and the fields of the ``info`` it was
        published with, beside them."""
        ...
    def open(self, tenant: str, version: str) -> IndexReader:
        """A version's index alone, read-only (checks and canaries)."""
        ...
    def open_published(self, tenant: str) -> PublishedVersion | None:
        """The served version, index and model together (``None`` before the first publish)."""
        ...
    def location(self, tenant: str, version: str) -> str:
        """Where a version lives, in this adapter's terms (a directory, a collection), for people."""
        ...
    def versions(self, tenant: str) -> list[str]: ...
    def drop_old(self, tenant: str, keep: int = 2) -> list[str]:
        """Drop versions (and their models) older than the published one but the ``keep`` newest."""
        ...


def open_published(store: IndexStore, tenant: str, load_model: Callable[[str, str], CollabModel | None]) \
        -> PublishedVersion | None:
    """``IndexStore.open_published`` for every adapter: the published record, its index and its model."""
    record = store.published_record(tenant)
    if record is None:
        return None
    version = record["version"]
    return PublishedVersion(store.open(tenant, version), load_model(tenant, version), record)


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
