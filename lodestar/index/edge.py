"""Qdrant Edge adapter: one shard directory per tenant per version, a pointer file per tenant.

Layout under the data dir::

    tenants/<tenant>/index/versions/<version>/   an EdgeShard, WAL disabled, its data never written
                                                 after finish() (the engine rewrites its
                                                 edge_config.json, same content, on every load; an
                                                 older version's gains the search-thread setting)
    tenants/<tenant>/index/PUBLISHED             {"version": ...} swapped with an atomic rename
    tenants/<tenant>/models/<version>/           the collaborative model built with that version
                                                 (its EASE matrix memory-mapped by every server),
                                                 and content.npy + content_ids.json: the version's
                                                 content vectors as one memory-mapped matrix

The WAL is disabled so that several serving processes can load the same finished shard read-only.

Points are named by an unsigned 64-bit number per item (:func:`lodestar.index.point_number`) in
versions built from scratch since 2026-11-22, and by a UUID in versions built before; a version
derived from another keeps its base's naming (:class:`PointIds`), so versions of both kinds are read
alike (the pipeline's index format 3 makes each tenant's next build a full one).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from lodestar.collab import CollabModel
from lodestar.errors import IndexEngineError
from lodestar.filters import ItemFilter
from lodestar.index import (
    CANDIDATE_FIELDS,
    COLLAB,
    CONTENT,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    POPULARITY,
    RESULT_FIELDS,
    Candidates,
    Hit,
    PublishedVersion,
    check_collab,
    common_attributes,
    new_version,
    open_published,
    point_id,
    point_number,
    point_numbers,
    point_uuid,
    point_uuids,
    to_hits,
    unknown_version,
    versions_to_drop,
)
from lodestar.index.qdrant_filters import translate_filter

log = logging.getLogger("lodestar.index")

BATCH = 512
FILTER_INDEX_MIN_POINTS = 2000  # versions this large index their filter fields (see _index_filter_fields)
# A query runs on the thread that asks. The engine's default hands each query to its own pool of
# search threads (8 per open version on a 2-core machine), whose hand-off and waiting cost more CPU
# than a version of one optimized segment saves by searching in parallel: MovieLens, a
# recommendation's two queries in process, 0.67-0.78 -> 0.50-0.54 ms of CPU; the API's CPU per
# request 4.8-5.6 -> 4.2-4.5 ms. The API runs one process per core for parallelism (`lodestar serve
# --workers N`). Older versions gain the setting when opened (_search_on_the_asking_thread).
SEARCH_THREADS = 1
T = TypeVar("T")


def _engine_call(method: Callable[..., T]) -> Callable[..., T]:
    """Qdrant Edge's native code reports a panic as pyo3's ``PanicException``, a ``BaseException``
    that no ``except Exception`` catches (a server would answer a bare 500): it becomes an
    :class:`IndexEngineError` here, which the API answers as a problem document."""
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except Exception:
            raise
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
            raise IndexEngineError(f"Qdrant Edge failed in {method.__name__}: {exc}") from None
    return call


def _search_on_the_asking_thread(config_path: Path) -> None:
    """Give a version built before ``SEARCH_THREADS`` existed (2026-11-23) the setting, before it is
    loaded: its ``edge_config.json`` gains ``"max_search_threads": 1``, replaced atomically (what
    the engine itself writes for a new version; ``EdgeShard.load(path, config)`` would rewrite the
    file in place). Without it each open version starts the engine's default pool of search
    threads (8 on a 2-core machine): at 1,000 tenants a server's 256 open versions held 2,048 of
    them. Only the setting changes, never the version's data (the engine itself writes this file
    anew, same content, whenever it loads a version). The new file is written beside the version
    directory, not in it (a derived build copying the version meanwhile sees the old file or the
    new, never a temporary one), and a data dir this process may not write is read as it is (the
    version then has its pool, as before)."""
    try:
        config = json.loads(config_path.read_text())
        if "max_search_threads" in config:
            return
        config["max_search_threads"] = SEARCH_THREADS
        _atomic_write(config_path, json.dumps(config), tmp_dir=config_path.parent.parent)
    except OSError as exc:
        log.info("left the search threads of %s as they are (%s)", config_path.parent.name, exc)


def _atomic_write(path: Path, text: str, tmp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``text`` atomically: written to a temporary file in ``tmp_dir`` (the
    same filesystem; by default ``path``'s directory), fsynced, renamed over it. The temporary
    file never outlives the call."""
    tmp = (tmp_dir or path.parent) / f".{path.parent.name}.{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class PointIds:
    """How a version names its points: by number (``numbered``, versions built from scratch since
    2026-11-22) or by UUID (earlier ones, and versions derived from them). Read from the shard
    itself (:meth:`of_shard`), so a version copied from another keeps its naming and nothing else
    records it."""

    __slots__ = ("tenant", "numbered")

    def __init__(self, tenant: str, numbered: bool) -> None:
        self.tenant = tenant
        self.numbered = numbered

    @classmethod
    def of_shard(cls, tenant: str, shard: qe.EdgeShard) -> PointIds:
        """The naming of the shard's points (an empty shard: by number, as a new version is)."""
        records, _offset = shard.scroll(qe.ScrollRequest(limit=1, with_payload=False, with_vector=False))
        return cls(tenant, not records or isinstance(records[0].id, int))

    def one(self, item_id: str) -> int | str:
        return point_number(self.tenant, item_id) if self.numbered else point_id(self.tenant, item_id)

    def many(self, item_ids: Iterable[str]) -> list[int] | list[str]:
        return [self.one(item_id) for item_id in item_ids]

    def keys(self, item_ids: Iterable[str]) -> list[int]:
        """Each item's point id as the ``int`` :meth:`key` makes of it (past the caches: a catalog)."""
        if self.numbered:
            return point_numbers(self.tenant, item_ids)
        return [point.int for point in point_uuids(self.tenant, item_ids)]

    def key(self, point: int | uuid.UUID) -> int:
        """A point id the engine returned, as an ``int``: looking a ``uuid.UUID`` up in a dict runs
        its Python ``__hash__`` and ``__eq__``."""
        return point if isinstance(point, int) else point.int

    def excluding(self, item_ids: frozenset[str]) -> qe.HasIdCondition:
        return _excluded(self.tenant, self.numbered, item_ids)


class EdgeIndexStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def _root(self, tenant: str) -> Path:
        return self.data_dir / "tenants" / tenant / "index"

    def _version_dir(self, tenant: str, version: str) -> Path:
        return self._root(tenant) / "versions" / version

    def _model_dir(self, tenant: str, version: str) -> Path:
        return self.data_dir / "tenants" / tenant / "models" / version

    def location(self, tenant: str, version: str) -> str:
        return str(self._version_dir(tenant, version))

    def build(self, tenant: str, dimension: int, collab_dimension: int = 0, base: str | None = None) -> EdgeIndexBuilder:
        """A builder for a new version: empty, or starting as a copy of version ``base`` (whose files
        are not written by the build: the copy is a new directory)."""
        version = new_version()
        path = self._version_dir(tenant, version)
        if base is not None:
            source = self._version_dir(tenant, base)
            if not (source / "edge_config.json").is_file():
                raise unknown_version(tenant, base)
            shutil.copytree(source, path)
        return EdgeIndexBuilder(tenant, version, path, self._model_dir(tenant, version), dimension, collab_dimension,
                                derived=base is not None,
                                base_model_dir=None if base is None else self._model_dir(tenant, base))

    def publish(self, tenant: str, version: str, info: dict[str, Any] | None = None) -> None:
        if not (self._version_dir(tenant, version) / "edge_config.json").is_file():
            raise unknown_version(tenant, version)
        record = {"version": version, "published_at": time.time(), **(info or {})}
        _atomic_write(self._root(tenant) / "PUBLISHED", json.dumps(record))

    def published_record(self, tenant: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._root(tenant) / "PUBLISHED").read_text())
        except FileNotFoundError:
            return None

    def published(self, tenant: str) -> str | None:
        record = self.published_record(tenant)
        return None if record is None else record["version"]

    def open(self, tenant: str, version: str) -> EdgeIndexReader:
        path = self._version_dir(tenant, version)
        if not (path / "edge_config.json").is_file():
            raise unknown_version(tenant, version)
        _search_on_the_asking_thread(path / "edge_config.json")
        shard = qe.EdgeShard.load(str(path))
        ids = PointIds.of_shard(tenant, shard)
        content = ContentMatrix.load(self._model_dir(tenant, version), ids)
        return EdgeIndexReader(tenant, version, shard, content, ids)

    def open_published(self, tenant: str) -> PublishedVersion | None:
        return open_published(self, tenant, self._load_model)

    def _load_model(self, tenant: str, version: str) -> CollabModel | None:
        path = self._model_dir(tenant, version)
        return CollabModel.load(path) if (path / "meta.json").is_file() else None

    def versions(self, tenant: str) -> list[str]:
        root = self._root(tenant) / "versions"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def drop_old(self, tenant: str, keep: int = 2) -> list[str]:
        """Delete versions older than the published one, keeping ``keep`` of them (newest first) so
        that a server still reading one is not cut off. Never deletes the published version or any
        version newer than it (a build may be in progress)."""
        dropped = versions_to_drop(self.versions(tenant), self.published(tenant), keep)
        for version in dropped:
            shutil.rmtree(self._version_dir(tenant, version), ignore_errors=True)
            shutil.rmtree(self._model_dir(tenant, version), ignore_errors=True)
        return dropped


class EdgeIndexBuilder:
    def __init__(
        self, tenant: str, version: str, path: Path, model_dir: Path, dimension: int, collab_dimension: int = 0,
        derived: bool = False, base_model_dir: Path | None = None,
    ) -> None:
        self.tenant = tenant
        self._base_model_dir = base_model_dir  # where the base version's sidecar is (a derived version)
        self._changed: set[str] = set()  # items upserted or deleted since the base
        self._written: dict[int | str, str] = {}  # point id -> item, of the items upserted here
        self.version = version
        self.path = path
        self.model_dir = model_dir
        self.collab_dimension = collab_dimension
        path.parent.mkdir(parents=True, exist_ok=True)
        # Vectors and payloads cold: memory-mapped without pre-warming. Qdrant's default tier warms
        # every file into memory when a shard opens, preallocated chunks included: ~65-95 MB for a
        # tenant of 200 items whose data is 1 MB. Cold, an open tenant costs what its queries touch
        # (the same pages the default warms, for a tenant that is queried), so a server holds
        # thousands. The id tracker keeps the default: cold, it made every query that excludes a
        # user's items 2.4x slower at p99 (MovieLens), and it costs a small tenant nothing more.
        cold = qe.Memory.Cold
        vectors = {CONTENT: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine, memory=cold)}
        if collab_dimension:
            vectors[COLLAB] = qe.EdgeVectorParams(size=collab_dimension, distance=qe.Distance.Dot, memory=cold)
        config = qe.EdgeConfig(vectors=vectors, wal_enabled=False, payload_memory=cold,
                               max_search_threads=SEARCH_THREADS)
        self._attributes: list[tuple[str, str]] | None = None  # common attributes, from the first batch
        if derived:
            # A copy of an earlier version: same vectors config (checked by load), payload indexes kept,
            # and its points' naming.
            self._shard = qe.EdgeShard.load(str(path), config)
            self.ids = PointIds.of_shard(tenant, self._shard)
            return
        self._shard = qe.EdgeShard.create(str(path), config)
        self.ids = PointIds(tenant, numbered=True)

    def _index_filter_fields(self) -> None:
        """Payload indexes for the filter fields, popularity and the attributes most items carry
        (numbers: float, text: keyword), so that filters and the popularity order of a large
        version do not scan payloads. A small version has none: a filter scans its few payloads as
        fast, its popularity order comes from the sidecar (:meth:`EdgeIndexReader.popular`), and
        each index would cost the server megabytes of memory per open tenant (Qdrant maps several
        preallocated files per index), which is most of what a small tenant costs."""
        present = set(self._shard.info().payload_schema)
        wanted = [(name, "keyword") for name in KEYWORD_FIELDS] + [(name, "float") for name in FLOAT_FIELDS]
        wanted += [(f"attributes.{key}", kind) for key, kind in (self._attributes or [])]
        for name, kind in wanted:
            if name not in present:
                schema = qe.PayloadSchemaType.Float if kind == "float" else qe.PayloadSchemaType.Keyword
                self._shard.update(qe.UpdateOperation.create_field_index(name, schema))

    def upsert(
        self, item_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]],
        collab: np.ndarray | None = None,
    ) -> None:
        check_collab(collab, len(item_ids), self.collab_dimension)
        if self._attributes is None:
            self._attributes = common_attributes(payloads)

        def named(i: int) -> dict[str, list[float]]:
            out = {CONTENT: vectors[i].tolist()}
            if self.collab_dimension:
                out[COLLAB] = collab[i].tolist()
            return out

        ids = self._points(item_ids, claim=True)
        for start in range(0, len(item_ids), BATCH):
            points = [
                qe.Point(ids[i], named(i), {**payloads[i], "item_id": item_ids[i]})
                for i in range(start, min(start + BATCH, len(item_ids)))
            ]
            self._shard.update(qe.UpdateOperation.upsert_points(points))
        self._changed.update(item_ids)

    def _points(self, item_ids: Sequence[str], claim: bool) -> list[int] | list[str]:
        """The items' point ids. The version is refused when one of them is the point of another item
        upserted here (which would be replaced, or deleted with it); ``claim``: the points are these
        items' from now on (an upsert)."""
        ids = self.ids.many(item_ids)
        if self.ids.numbered:
            for point, item_id in zip(ids, item_ids, strict=True):
                owner = self._written.setdefault(point, item_id) if claim else self._written.get(point, item_id)
                if owner != item_id:
                    self._refuse_shared(f"{owner!r} and {item_id!r}")
        return ids

    def _refuse_shared(self, items: str) -> None:
        """Two items would share a point (one would silently replace the other): the version is refused."""
        if items:
            self._shard.close()
            raise IndexEngineError(
                f"tenant {self.tenant!r}: items {items} have the same point id (a 64-bit hash of the item id; "
                "about one chance in 10^9 at 200,000 items): rename one of them and build again")

    def delete(self, item_ids: Sequence[str]) -> None:
        self._changed.update(item_ids)
        ids = self._points(item_ids, claim=False)
        for start in range(0, len(ids), BATCH):
            self._shard.update(qe.UpdateOperation.delete_points(ids[start:start + BATCH]))

    def attach_model(self, model: CollabModel) -> None:
        model.save(self.model_dir)

    def finish(self) -> int:
        if self._shard.info().points_count >= FILTER_INDEX_MIN_POINTS:
            self._index_filter_fields()  # before optimize(), which builds the HNSW graph
        self._shard.flush()
        self._shard.optimize()
        self._shard.flush()
        count = self._shard.info().points_count
        base = ContentMatrix.load(self._base_model_dir, self.ids) if self._base_model_dir else None
        content = base.derived(self._shard, self._changed) if base is not None else None
        if content is not None and len(content.item_ids) != count and self.ids.numbered:
            # A changed item that took a kept one's point: the kept item would be lost. (A numbered
            # base always has a sidecar: both came with the pipeline's index formats 2 and 3.)
            self._refuse_shared(_sharing(content))
        if content is None or len(content.item_ids) != count:  # no base sidecar, or one that disagrees
            content = ContentMatrix.from_shard(self.tenant, self._shard, self.ids)
        content.save(self.model_dir)
        self._shard.close()
        return count


class ContentMatrix:
    """A finished version's content vectors as one matrix (memory-mapped when loaded, so serving
    processes share it through the page cache) and each item's popularity, written from the shard
    when the version is built.

    The engine hands results to Python one object at a time: reading a user's recent items'
    vectors converts each into hundreds of Python floats, and the payloads of a query's 300
    candidates cost more than the query. With this sidecar a candidate query asks the engine for
    point ids alone, and vectors are rows of the matrix. Versions built before it was written have
    none, and the reader asks the engine as before.
    """

    IDS, MATRIX, POPULARITY = "content_ids.json", "content.npy", "popularity.npy"

    def __init__(self, item_ids: list[str], matrix: np.ndarray, popularity: np.ndarray, ids: PointIds) -> None:
        self.item_ids = item_ids
        self.matrix = matrix
        self.popularity = popularity
        self.rows = {item_id: row for row, item_id in enumerate(item_ids)}
        self.popularity_order = np.argsort(-popularity, kind="stable")  # most popular first
        self.ids = ids  # the version's naming (and its tenant)

    @functools.cached_property
    def by_point(self) -> dict[int, int]:
        """Row of each point id (as :meth:`PointIds.key` makes it an ``int``), made when a query
        first needs it or a build checks its ids."""
        return {key: row for row, key in enumerate(self.ids.keys(self.item_ids))}

    @classmethod
    def from_shard(cls, tenant: str, shard: qe.EdgeShard, ids: PointIds | None = None) -> ContentMatrix:
        """Read every point's content vector and popularity, a batch at a time into one float32
        matrix (a float list per vector for the whole catalog would take ~12 KB per item)."""
        count = shard.info().points_count
        item_ids: list[str] = []
        popularity = np.zeros(count, dtype=np.float64)
        matrix: np.ndarray | None = None
        offset = None
        while len(item_ids) < count:
            records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=2048, with_payload=list(CANDIDATE_FIELDS),
                                                            with_vector=[CONTENT]))
            if not records:
                break
            block = np.asarray([record.vector[CONTENT] for record in records], dtype=np.float32)
            if matrix is None:
                matrix = np.empty((count, block.shape[1]), dtype=np.float32)
            start = len(item_ids)
            matrix[start:start + len(records)] = block
            for n, record in enumerate(records):
                item_ids.append(record.payload["item_id"])
                popularity[start + n] = float(record.payload.get(POPULARITY, 0.0))
            if offset is None:
                break
        rows = len(item_ids)
        return cls(item_ids, (matrix if matrix is not None else np.zeros((0, 0), np.float32))[:rows],
                   popularity[:rows], ids or PointIds.of_shard(tenant, shard))

    def derived(self, shard: qe.EdgeShard, changed: set[str]) -> ContentMatrix:
        """The sidecar of a version copied from this one's and then changed in ``changed`` items:
        this one's rows for the others (the copy holds the very same points), the changed items
        that are still there read from ``shard``. At 100,000 items and one change: 0.1 s instead of
        the 1.3 s of reading every point back from the engine."""
        kept = [row for row, item_id in enumerate(self.item_ids) if item_id not in changed]
        ids = sorted(changed)
        records = shard.retrieve(self.ids.many(ids), with_payload=list(CANDIDATE_FIELDS),
                                 with_vector=[CONTENT]) if ids else []
        added = np.asarray([r.vector[CONTENT] for r in records], dtype=np.float32).reshape(len(records), self.matrix.shape[1])
        matrix = np.concatenate([np.asarray(self.matrix[kept], dtype=np.float32), added])
        popularity = np.concatenate([self.popularity[kept],
                                     np.asarray([float(r.payload.get(POPULARITY, 0.0)) for r in records])])
        item_ids = [self.item_ids[row] for row in kept] + [r.payload["item_id"] for r in records]
        return ContentMatrix(item_ids, matrix, popularity, self.ids)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / self.MATRIX, self.matrix)
        np.save(directory / self.POPULARITY, self.popularity)
        _atomic_write(directory / self.IDS, json.dumps(self.item_ids))  # written last: its presence means complete

    @classmethod
    def load(cls, directory: Path, ids: PointIds) -> ContentMatrix | None:
        try:
            item_ids = json.loads((directory / cls.IDS).read_text())
            matrix = np.load(directory / cls.MATRIX, mmap_mode="r")
            popularity = np.load(directory / cls.POPULARITY)
        except FileNotFoundError:
            return None
        return cls(item_ids, matrix, popularity, ids)

    def candidates(self, points: Sequence[Any]) -> Candidates:
        """Scored points (ids only) as :class:`Candidates`: their rows looked up once, popularity
        taken from the sidecar's array. (A :class:`Hit` and a payload dict per candidate cost the
        demo shop's recommendation more than its engine query: 0.24 ms of Python for 300.)"""
        by_point = self.by_point
        if self.ids.numbered:
            pairs = [(by_point[point.id], point.score) for point in points]
        else:
            key = self.ids.key
            pairs = [(by_point[key(point.id)], point.score) for point in points]
        if not pairs:
            return Candidates.of_hits([])
        rows, scores = zip(*pairs, strict=True)
        item_ids = self.item_ids
        return Candidates([item_ids[row] for row in rows], np.asarray(scores, dtype=np.float64),
                          self.popularity[np.asarray(rows, dtype=np.int64)])

    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        found = [(i, self.rows[i]) for i in dict.fromkeys(item_ids) if i in self.rows]
        if not found:
            return {}
        block = np.asarray(self.matrix[[row for _i, row in found]])  # one read of the mapped rows
        return {item_id: block[n] for n, (item_id, _row) in enumerate(found)}


class EdgeIndexReader:
    """A loaded, finished version. Only reads; safe to share between request threads."""

    def __init__(self, tenant: str, version: str, shard: qe.EdgeShard, content: ContentMatrix | None = None,
                 ids: PointIds | None = None) -> None:
        self.tenant = tenant
        self.version = version
        self._shard = shard
        self._content = content
        self._ids = ids or PointIds.of_shard(tenant, shard)
        self._indexed = set(shard.info().payload_schema)  # fields with a payload index

    def _filter(self, exclude: Iterable[str], item_filter: ItemFilter | None) -> qe.Filter | None:
        excluded = frozenset(exclude)
        return translate_filter(item_filter, self._ids.excluding(excluded) if excluded else None, _EDGE)

    def count(self) -> int:
        return self._shard.info().points_count

    @_engine_call
    def nearest(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        with_vectors: bool = False, item_filter: ItemFilter | None = None, fields: Sequence[str] = RESULT_FIELDS,
    ) -> list[Hit]:
        if item_filter is not None and item_filter.match_nothing:
            return []
        if self._content is not None and not with_vectors and set(fields) <= set(CANDIDATE_FIELDS):
            return self.candidates(vector, k, exclude, using, item_filter).hits()  # from the sidecar
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=using),
            filter=self._filter(exclude, item_filter),
            with_payload=list(fields),
            with_vector=[CONTENT] if with_vectors else False,
        )
        return to_hits(self._shard.query(request))

    @_engine_call
    def candidates(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        item_filter: ItemFilter | None = None,
    ) -> Candidates:
        if self._content is None:  # a version from before the sidecar: hits with their payloads
            return Candidates.of_hits(self.nearest(vector, k, exclude, using, item_filter=item_filter,
                                                   fields=CANDIDATE_FIELDS))
        if item_filter is not None and item_filter.match_nothing:
            return Candidates.of_hits([])
        request = qe.QueryRequest(
            limit=k, query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=using),
            filter=self._filter(exclude, item_filter), with_payload=False, with_vector=False,
        )
        return self._content.candidates(self._shard.query(request))

    @_engine_call
    def popular(self, k: int, exclude: Iterable[str] = (), item_filter: ItemFilter | None = None) -> list[Hit]:
        if item_filter is not None and item_filter.match_nothing:
            return []
        if self._content is not None and POPULARITY not in self._indexed:
            return self._popular_from_sidecar(k, set(exclude), item_filter)
        request = qe.QueryRequest(
            limit=k,
            query=qe.OrderBy(POPULARITY, qe.Direction.Desc),
            filter=self._filter(exclude, item_filter),
            with_payload=RESULT_FIELDS,
        )
        return to_hits(self._shard.query(request), score_field=POPULARITY)

    def _popular_from_sidecar(self, k: int, exclude: set[str], item_filter: ItemFilter | None) -> list[Hit]:
        """The popularity order of a small version (no popularity index): the sidecar's order,
        excluded items skipped, payloads read batch by batch and matched against the filter."""
        content = self._content
        assert content is not None
        out: list[Hit] = []
        batch = max(4 * k, 64)
        order = [content.item_ids[row] for row in content.popularity_order if content.item_ids[row] not in exclude]
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch] if item_filter is not None and not item_filter.empty else order[:k]
            points = self.points(chunk)
            for item_id in chunk:
                hit = points.get(item_id)
                if hit is not None and (item_filter is None or item_filter.matches(hit.payload)):
                    out.append(Hit(item_id, float(hit.payload.get(POPULARITY, 0.0)), hit.payload))
                    if len(out) == k:
                        return out
            if item_filter is None or item_filter.empty:
                break
        return out

    @_engine_call
    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        if self._content is not None:
            return self._content.vectors(item_ids)
        ids = self._ids.many(dict.fromkeys(item_ids))
        if not ids:
            return {}
        records = self._shard.retrieve(ids, with_payload=["item_id"], with_vector=[CONTENT])
        return {r.payload["item_id"]: np.asarray(r.vector[CONTENT], dtype=np.float32) for r in records}

    @_engine_call
    def points(self, item_ids: Iterable[str]) -> dict[str, Hit]:
        ids = self._ids.many(dict.fromkeys(item_ids))
        if not ids:
            return {}
        # A record's payload is converted to a new dict on every access (about a microsecond): read once.
        if self._content is not None:
            payloads = [r.payload for r in self._shard.retrieve(ids, with_payload=RESULT_FIELDS, with_vector=False)]
            vectors = self._content.vectors(p["item_id"] for p in payloads)
            return {p["item_id"]: Hit(p["item_id"], 0.0, p, vectors.get(p["item_id"])) for p in payloads}
        records = self._shard.retrieve(ids, with_payload=RESULT_FIELDS, with_vector=[CONTENT])
        hits = (Hit(p["item_id"], 0.0, p, np.asarray(r.vector[CONTENT], dtype=np.float32))
                for r, p in zip(records, [r.payload for r in records], strict=True))
        return {hit.item_id: hit for hit in hits}

    @_engine_call
    def get(self, item_id: str) -> Hit | None:
        records = self._shard.retrieve([self._ids.one(item_id)], with_payload=True, with_vector=[CONTENT])
        if not records:
            return None
        record = records[0]
        return Hit(item_id, 1.0, dict(record.payload), np.asarray(record.vector[CONTENT], dtype=np.float32))

    def close(self) -> None:
        self._shard.close()


# Conditions made for a set of ids (per tenant), kept while the set lives: the set of a user's items
# that lodestar.user_state keeps between their requests keeps its condition too (no count bound to
# churn). An equal set made later finds the entry; the entry lives as long as the set it was made for.
_KEPT_EXCLUSIONS: weakref.WeakKeyDictionary[frozenset[str], dict[tuple[str, bool], qe.HasIdCondition]] = \
    weakref.WeakKeyDictionary()
_KEPT_LOCK = threading.Lock()


def _excluded(tenant: str, numbered: bool, item_ids: frozenset[str]) -> qe.HasIdCondition:
    """The has-id condition excluding ``item_ids`` from a version whose points are ``numbered`` or
    not (kept: one recommendation queries twice with the same exclusions and the user's next
    request usually repeats them; for a user with thousands of items, converting the ids into the
    engine's condition costs milliseconds, more than a query)."""
    with _KEPT_LOCK:
        kept = _KEPT_EXCLUSIONS.get(item_ids, {}).get((tenant, numbered))
    if kept is not None:
        return kept
    condition = _recent_exclusion(tenant, numbered, item_ids)
    with _KEPT_LOCK:
        _KEPT_EXCLUSIONS.setdefault(item_ids, {})[(tenant, numbered)] = condition
    return condition


@functools.lru_cache(maxsize=256)
def _recent_exclusion(tenant: str, numbered: bool, item_ids: frozenset[str]) -> qe.HasIdCondition:
    """The conditions of the latest sets (for callers that do not keep their set between requests)."""
    if numbered:
        return qe.HasIdCondition({point_number(tenant, i) for i in item_ids})
    return qe.HasIdCondition({point_uuid(tenant, i) for i in item_ids})


def _sharing(content: ContentMatrix) -> str:
    """Items of ``content`` whose point ids collide, for the error that refuses the version."""
    seen: dict[int, str] = {}
    pairs = []
    for item_id, key in zip(content.item_ids, content.ids.keys(content.item_ids), strict=True):
        if seen.setdefault(key, item_id) != item_id:
            pairs.append(f"{seen[key]!r} and {item_id!r}")
    return ", ".join(pairs[:5])


class _EdgeConditions:
    """Filter objects of qdrant-edge-py (for :func:`lodestar.index.translate_filter`)."""

    def match_any(self, key: str, values: list[Any]) -> qe.FieldCondition:
        return qe.FieldCondition(key, match=qe.MatchAny(values))

    def range(self, key: str, bounds: dict[str, float]) -> qe.FieldCondition:
        return qe.FieldCondition(key, range=qe.RangeFloat(**bounds))

    def combine(self, must: list | None = None, must_not: list | None = None, should: list | None = None) -> qe.Filter:
        return qe.Filter(must=must, must_not=must_not, should=should)


_EDGE = _EdgeConditions()
