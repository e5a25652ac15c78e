"""Qdrant server adapter of the index port (qdrant-client), for a Qdrant server or cluster.

Two layouts, chosen by ``LODESTAR_QDRANT_MODE``:

``collection`` (default): a collection per tenant version, ``lodestar--<tenant>--<version>``, with
its payload indexes created before the upload; points are uploaded in batches with ``wait=True``;
publishing records the version's information in the collection's metadata and then swaps the
tenant's alias ``lodestar--<tenant>`` to it in one atomic alias request; old collections are dropped.

``shared``: for thousands of small tenants, the layout Qdrant recommends for multitenancy: one
collection ``lodestar--shared`` whose points carry ``tenant_id`` (a keyword index with
``is_tenant=true``) and ``lodestar_version``; every query is filtered by both. The published version
of each tenant is a point of the ``lodestar--registry`` collection, replaced atomically.

The collaborative model built with a version lives in Qdrant too, so API replicas need no shared
volume: ``lodestar--models`` holds it as an ``.npz`` blob split into base64 chunks (one point per
chunk, ids derived from tenant, version and chunk number), written before the version can be
published and dropped with it. A server reads it whole when it opens the version (into memory: no
page-cache sharing between processes, unlike the embedded adapter's memory-mapped file).

With a ``:memory:`` or ``path:`` URL the same code runs on qdrant-client's local mode (one process;
the tests use it); with an ``http(s)://`` URL, on a server.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from lodestar.collab import CollabModel
from lodestar.errors import InvalidInput, NotFound
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
    to_hits,
    unknown_version,
    versions_to_drop,
)
from lodestar.index.qdrant_filters import translate_filter

BATCH = 256
PREFIX = "lodestar--"
SHARED = f"{PREFIX}shared"
REGISTRY = f"{PREFIX}registry"
# Tenant names start with a letter or digit (lodestar.cdp.TENANT_NAME), so no tenant's alias can
# take this name.
MODELS = f"{PREFIX}_models"
MODEL_CHUNK = 4 * 1024 * 1024  # raw bytes per model point (~5.6 MB of base64, under Qdrant's 32 MB request limit)
MODES = ("collection", "shared")


def client_for(url: str, api_key: str | None = None) -> QdrantClient:
    """``http(s)://host:port`` for a server, ``:memory:`` or ``path:/dir`` for local mode."""
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("path:"):
        return QdrantClient(path=url[len("path:"):])
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"LODESTAR_QDRANT_URL {url!r} is not valid: use http(s)://host:6333, :memory: or path:/dir")
    return QdrantClient(url=url, api_key=api_key, timeout=60)


def _version_of(tenant: str, collection: str) -> str | None:
    """The version a collection ``lodestar--<tenant>--<version>`` holds, or ``None`` when it is not
    one of ``tenant``'s. Tenant names may contain ``-``, so a prefix test would take tenant ``a-x``'s
    (or ``a--b``'s) collections for ``a``'s; a version name has a fixed shape (lodestar.index.new_version)."""
    match = re.fullmatch(rf"{re.escape(PREFIX + tenant)}--(v[0-9]{{8}}T[0-9]{{6}}[._][0-9]{{6}}-[0-9a-f]{{4}})", collection)
    return match.group(1) if match else None


class _ClientConditions:
    """Filter objects of qdrant-client (for :func:`lodestar.index.translate_filter`)."""

    def match_any(self, key: str, values: list[Any]) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def range(self, key: str, bounds: dict[str, float]) -> models.FieldCondition:
        return models.FieldCondition(key=key, range=models.Range(**bounds))


    def combine(self, must: list | None = None, must_not: list | None = None, should: list | None = None) -> models.Filter:
        return models.Filter(must=must, must_not=must_not, should=should)


_CLIENT = _ClientConditions()


class _ModelBlobs:
    """Collaborative models kept in Qdrant as chunked blobs (see the module docstring)."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    @staticmethod
    def _id(tenant: str, version: str, chunk: int) -> str:
        return point_id(tenant, f"model/{version}/{chunk}")

    @staticmethod
    def _selector(tenant: str, version: str) -> models.Filter:
        return models.Filter(must=[models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant)),
                                   models.FieldCondition(key="version", match=models.MatchValue(value=version))])

    def save(self, tenant: str, version: str, model: CollabModel) -> None:
        if not self.client.collection_exists(MODELS):
            self.client.create_collection(MODELS, vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))
            for key in ("tenant_id", "version"):
                self.client.create_payload_index(MODELS, key, models.PayloadSchemaType.KEYWORD, wait=True)
        blob = model.to_bytes()
        chunks = [blob[start:start + MODEL_CHUNK] for start in range(0, len(blob), MODEL_CHUNK)] or [b""]
        for n, chunk in enumerate(chunks):
            payload = {"tenant_id": tenant, "version": version, "chunk": n, "chunks": len(chunks),
                       "data": base64.b64encode(chunk).decode("ascii")}
            self.client.upsert(MODELS, points=[models.PointStruct(id=self._id(tenant, version, n), vector=[1.0],
                                                                  payload=payload)], wait=True)

    def load(self, tenant: str, version: str) -> CollabModel | None:
        if not self.client.collection_exists(MODELS):
            return None
        first = self.client.retrieve(MODELS, ids=[self._id(tenant, version, 0)], with_payload=True)
        if not first:
            return None
        parts = [base64.b64decode(first[0].payload["data"])]
        for n in range(1, int(first[0].payload["chunks"])):
            record = self.client.retrieve(MODELS, ids=[self._id(tenant, version, n)], with_payload=True)
            if not record:
                raise NotFound(f"the collaborative model of index version {version!r} of tenant {tenant!r} is "
                               f"incomplete (chunk {n} is missing): rebuild the index")
            parts.append(base64.b64decode(record[0].payload["data"]))
        return CollabModel.from_bytes(b"".join(parts))

    def drop(self, tenant: str, version: str) -> None:
        if self.client.collection_exists(MODELS):
            self.client.delete(MODELS, points_selector=models.FilterSelector(filter=self._selector(tenant, version)),
                               wait=True)


class _Layout:
    """Where a tenant version's points live and how they are told apart."""

    def __init__(self, mode: str, tenant: str, version: str) -> None:
        self.shared = mode == "shared"
        self.tenant = tenant
        self.version = version
        self.collection = SHARED if self.shared else f"{PREFIX}{tenant}--{version}"

    def pid(self, item_id: str) -> str:
        return point_id(self.tenant, f"{self.version}/{item_id}" if self.shared else item_id)

    @property
    def base(self) -> list:
        if not self.shared:
            return []
        return [models.FieldCondition(key="tenant_id", match=models.MatchValue(value=self.tenant)),
                models.FieldCondition(key="lodestar_version", match=models.MatchValue(value=self.version))]

    def payload(self, item_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        out = {**payload, "item_id": item_id}
        if self.shared:
            out.update(tenant_id=self.tenant, lodestar_version=self.version)
        return out


class QdrantIndexStore:
    def __init__(self, client: QdrantClient, mode: str = "collection") -> None:
        if mode not in MODES:
            raise InvalidInput(f"LODESTAR_QDRANT_MODE must be one of {', '.join(MODES)}, got {mode!r}")
        self.client = client
        self.mode = mode
        self._models = _ModelBlobs(client)

    # -- registry (shared layout) --------------------------------------------------------------
    def _ensure_registry(self) -> None:
        if not self.client.collection_exists(REGISTRY):
            self.client.create_collection(REGISTRY, vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))

    def _registry(self, tenant: str) -> dict[str, Any]:
        if not self.client.collection_exists(REGISTRY):
            return {}
        records = self.client.retrieve(REGISTRY, ids=[point_id(tenant, "registry")], with_payload=True)
        return dict(records[0].payload) if records else {}

    def _set_registry(self, tenant: str, record: dict[str, Any]) -> None:
        self._ensure_registry()
        self.client.upsert(REGISTRY, points=[models.PointStruct(id=point_id(tenant, "registry"), vector=[1.0],
                                                                payload=record)], wait=True)

    # -- the port ------------------------------------------------------------------------------
    def build(self, tenant: str, dimension: int, collab_dimension: int = 0, base: str | None = None) -> QdrantIndexBuilder:
        layout = _Layout(self.mode, tenant, new_version())
        vectors = {CONTENT: models.VectorParams(size=dimension, distance=models.Distance.COSINE)}
        if collab_dimension:
            vectors[COLLAB] = models.VectorParams(size=collab_dimension, distance=models.Distance.DOT)
        if base is not None and base not in self.versions(tenant):
            raise unknown_version(tenant, base)
        if self.shared:
            if not self.client.collection_exists(SHARED):
                self.client.create_collection(SHARED, vectors_config=vectors)
                self.client.create_payload_index(
                    SHARED, "tenant_id", field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD,
                                                                                is_tenant=True), wait=True)
                self.client.create_payload_index(SHARED, "lodestar_version", models.PayloadSchemaType.KEYWORD, wait=True)
            registry = self._registry(tenant)
            self._set_registry(tenant, {**registry, "versions": sorted({*registry.get("versions", []), layout.version})})
        else:
            self.client.create_collection(layout.collection, vectors_config=vectors,
                                          metadata={"lodestar_tenant": tenant, "lodestar_version": layout.version})
        # Payload indexes before the upload, as Qdrant recommends.
        for name in KEYWORD_FIELDS:
            self.client.create_payload_index(layout.collection, name, models.PayloadSchemaType.KEYWORD, wait=True)
        for name in FLOAT_FIELDS:
            self.client.create_payload_index(layout.collection, name, models.PayloadSchemaType.FLOAT, wait=True)
        builder = QdrantIndexBuilder(self.client, layout, collab_dimension, self._models)
        if base is not None:
            builder.copy_from(_Layout(self.mode, tenant, base))
        return builder

    @property
    def shared(self) -> bool:
        return self.mode == "shared"

    def _alias(self, tenant: str) -> str:
        return f"{PREFIX}{tenant}"

    def publish(self, tenant: str, version: str, info: dict[str, Any] | None = None) -> None:
        if version not in self.versions(tenant):
            raise unknown_version(tenant, version)
        record = {"version": version, "published_at": time.time(), **(info or {})}
        if self.shared:
            self._set_registry(tenant, {**self._registry(tenant), "published": record})
            return
        layout = _Layout(self.mode, tenant, version)
        self.client.update_collection(layout.collection, metadata={"lodestar_published": record})
        alias = self._alias(tenant)
        operations: list = []
        if any(a.alias_name == alias for a in self.client.get_aliases().aliases):
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=layout.collection, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)  # one atomic request

    def _aliased(self, tenant: str) -> str | None:
        """The collection the tenant's alias points at (``None`` before the first publish)."""
        alias = self._alias(tenant)
        return next((a.collection_name for a in self.client.get_aliases().aliases if a.alias_name == alias), None)

    def published_record(self, tenant: str) -> dict[str, Any] | None:
        if self.shared:
            return self._registry(tenant).get("published")
        target = self._aliased(tenant)
        if target is None:
            return None
        metadata = self.client.get_collection(target).config.metadata or {}
        return metadata.get("lodestar_published") or {"version": _version_of(tenant, target)}

    def published(self, tenant: str) -> str | None:
        """The served version: the alias's target (one request; servers poll it)."""
        if self.shared:
            record = self.published_record(tenant)
            return None if record is None else record["version"]
        target = self._aliased(tenant)
        return None if target is None else _version_of(tenant, target)

    def open_published(self, tenant: str) -> PublishedVersion | None:
        return open_published(self, tenant, self._models.load)

    def location(self, tenant: str, version: str) -> str:
        layout = _Layout(self.mode, tenant, version)
        return f"collection {layout.collection}" + (f" (points of version {version})" if self.shared else "")

    def open(self, tenant: str, version: str) -> QdrantIndexReader:
        if version not in self.versions(tenant):
            raise unknown_version(tenant, version)
        return QdrantIndexReader(self.client, _Layout(self.mode, tenant, version))

    def versions(self, tenant: str) -> list[str]:
        if self.shared:
            return sorted(self._registry(tenant).get("versions", []))
        names = (_version_of(tenant, c.name) for c in self.client.get_collections().collections)
        return sorted(v for v in names if v is not None)

    def drop_old(self, tenant: str, keep: int = 2) -> list[str]:
        """Drop versions older than the published one but the ``keep`` newest of them."""
        dropped = versions_to_drop(self.versions(tenant), self.published(tenant), keep)
        for version in dropped:
            self._models.drop(tenant, version)
            layout = _Layout(self.mode, tenant, version)
            if self.shared:
                self.client.delete(SHARED, points_selector=models.FilterSelector(filter=models.Filter(must=layout.base)),
                                   wait=True)
            else:
                self.client.delete_collection(layout.collection)
        if self.shared and dropped:
            registry = self._registry(tenant)
            self._set_registry(tenant, {**registry, "versions": [v for v in registry["versions"] if v not in dropped]})
        return dropped


class QdrantIndexBuilder:
    def __init__(self, client: QdrantClient, layout: _Layout, collab_dimension: int, model_blobs: _ModelBlobs) -> None:
        self.client = client
        self.layout = layout
        self._models = model_blobs
        self.version = layout.version
        self.collab_dimension = collab_dimension
        self._attributes_indexed = False

    def copy_from(self, base: _Layout) -> None:
        """Start with every point of version ``base`` (scrolled with vectors, re-uploaded)."""
        offset = None
        while True:
            records, offset = self.client.scroll(base.collection, scroll_filter=models.Filter(must=base.base) if base.base
                                                 else None, limit=BATCH, offset=offset, with_payload=True,
                                                 with_vectors=True)
            points = [models.PointStruct(id=self.layout.pid(r.payload["item_id"]), vector=r.vector,
                                         payload=self.layout.payload(r.payload["item_id"], {
                                             k: v for k, v in r.payload.items()
                                             if k not in ("tenant_id", "lodestar_version", "item_id")}))
                      for r in records]
            if points:
                self.client.upsert(self.layout.collection, points=points, wait=True)
            if offset is None:
                break
        self._attributes_indexed = True

    def upsert(
        self, item_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]],
        collab: np.ndarray | None = None,
    ) -> None:
        check_collab(collab, len(item_ids), self.collab_dimension)
        if not self._attributes_indexed:
            for key, kind in common_attributes(payloads):
                schema = models.PayloadSchemaType.FLOAT if kind == "float" else models.PayloadSchemaType.KEYWORD
                self.client.create_payload_index(self.layout.collection, f"attributes.{key}", schema, wait=True)
            self._attributes_indexed = True
        for start in range(0, len(item_ids), BATCH):
            points = []
            for i in range(start, min(start + BATCH, len(item_ids))):
                vector = {CONTENT: vectors[i].tolist()}
                if self.collab_dimension:
                    vector[COLLAB] = collab[i].tolist()
                points.append(models.PointStruct(id=self.layout.pid(item_ids[i]), vector=vector,
                                                 payload=self.layout.payload(item_ids[i], payloads[i])))
            self.client.upsert(self.layout.collection, points=points, wait=True)

    def delete(self, item_ids: Sequence[str]) -> None:
        ids = [self.layout.pid(i) for i in item_ids]
        for start in range(0, len(ids), BATCH):
            self.client.delete(self.layout.collection, points_selector=models.PointIdsList(points=ids[start:start + BATCH]),
                               wait=True)

    def attach_model(self, model: CollabModel) -> None:
        self._models.save(self.layout.tenant, self.version, model)

    def finish(self) -> int:
        return QdrantIndexReader(self.client, self.layout).count()


class QdrantIndexReader:
    """A version's points. Only reads; the client is safe to share between request threads."""

    def __init__(self, client: QdrantClient, layout: _Layout) -> None:
        self.client = client
        self.layout = layout
        self.tenant = layout.tenant
        self.version = layout.version

    def _filter(self, exclude: Iterable[str], item_filter: ItemFilter | None) -> models.Filter | None:
        ids = [self.layout.pid(i) for i in dict.fromkeys(exclude)]
        return translate_filter(item_filter, models.HasIdCondition(has_id=ids) if ids else None, _CLIENT, self.layout.base)

    def count(self) -> int:
        base = self.layout.base
        return self.client.count(self.layout.collection, count_filter=models.Filter(must=base) if base else None,
                                 exact=True).count

    def nearest(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        with_vectors: bool = False, item_filter: ItemFilter | None = None, fields: Sequence[str] = RESULT_FIELDS,
    ) -> list[Hit]:
        if item_filter is not None and item_filter.match_nothing:
            return []
        response = self.client.query_points(
            self.layout.collection, query=np.asarray(vector, dtype=np.float32).tolist(), using=using, limit=k,
            query_filter=self._filter(exclude, item_filter), with_payload=list(fields),
            with_vectors=[CONTENT] if with_vectors else False,
        )
        return to_hits(response.points)

    def candidates(
        self, vector: np.ndarray, k: int, exclude: Iterable[str] = (), using: str = CONTENT,
        item_filter: ItemFilter | None = None,
    ) -> Candidates:
        return Candidates.of_hits(self.nearest(vector, k, exclude, using, item_filter=item_filter,
                                               fields=CANDIDATE_FIELDS))

    def popular(self, k: int, exclude: Iterable[str] = (), item_filter: ItemFilter | None = None) -> list[Hit]:
        if item_filter is not None and item_filter.match_nothing:
            return []
        response = self.client.query_points(
            self.layout.collection,
            query=models.OrderByQuery(order_by=models.OrderBy(key=POPULARITY, direction=models.Direction.DESC)),
            limit=k, query_filter=self._filter(exclude, item_filter), with_payload=RESULT_FIELDS,
        )
        return to_hits(response.points, score_field=POPULARITY)

    def vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        ids = [self.layout.pid(i) for i in dict.fromkeys(item_ids)]
        if not ids:
            return {}
        records = self.client.retrieve(self.layout.collection, ids=ids, with_payload=["item_id"], with_vectors=[CONTENT])
        return {r.payload["item_id"]: np.asarray(r.vector[CONTENT], dtype=np.float32) for r in records}

    def points(self, item_ids: Iterable[str]) -> dict[str, Hit]:
        ids = [self.layout.pid(i) for i in dict.fromkeys(item_ids)]
        if not ids:
            return {}
        records = self.client.retrieve(self.layout.collection, ids=ids, with_payload=RESULT_FIELDS,
                                       with_vectors=[CONTENT])
        return {r.payload["item_id"]: Hit(r.payload["item_id"], 0.0, dict(r.payload),
                                          np.asarray(r.vector[CONTENT], dtype=np.float32)) for r in records}

    def get(self, item_id: str) -> Hit | None:
        records = self.client.retrieve(self.layout.collection, ids=[self.layout.pid(item_id)], with_payload=True,
                                       with_vectors=[CONTENT])
        if not records:
            return None
        payload = {k: v for k, v in records[0].payload.items() if k not in ("tenant_id", "lodestar_version")}
        return Hit(item_id, 1.0, payload, np.asarray(records[0].vector[CONTENT], dtype=np.float32))

    def close(self) -> None:
        pass  # the client belongs to the store
