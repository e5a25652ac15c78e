"""The Qdrant Edge adapter: versions, atomic publish, read-only readers, queries."""

import numpy as np
import pytest

from lodestar.errors import NotFound
from lodestar.index.edge import EdgeIndexStore


def _build(store, tenant, n=20, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(n)]
    payloads = [{"title": f"Item {k}", "popularity": float(k) / n, "categories": ["c"]} for k in range(n)]
    builder = store.build(tenant, 8)
    builder.upsert(ids, vectors, payloads)
    assert builder.finish() == n
    return builder.version, ids, vectors


def test_build_publish_query(tmp_path):
    store = EdgeIndexStore(tmp_path)
    version, ids, vectors = _build(store, "acme")
    assert store.published("acme") is None  # built is not published
    store.publish("acme", version, {"points": 20})
    assert store.published("acme") == version
    reader = store.open("acme", version)
    try:
        assert reader.count() == 20
        hits = reader.nearest(vectors[3], 5)
        assert hits[0].item_id == "i3" and hits[0].payload["title"] == "Item 3"
        assert "i3" not in [h.item_id for h in reader.nearest(vectors[3], 5, exclude=["i3"])]
        popular = reader.popular(3, exclude=["i19"])
        assert [h.item_id for h in popular] == ["i18", "i17", "i16"]
        assert np.allclose(reader.vectors(["i1", "missing"])["i1"], vectors[1], atol=1e-6)
        assert reader.get("missing") is None and reader.get("i2").payload["title"] == "Item 2"
    finally:
        reader.close()


def test_tenants_have_separate_shards(tmp_path):
    store = EdgeIndexStore(tmp_path)
    a, _, _ = _build(store, "a", seed=1)
    b, _, vectors_b = _build(store, "b", n=5, seed=2)
    store.publish("a", a)
    store.publish("b", b)
    reader = store.open("a", a)
    try:
        assert reader.count() == 20
        # Same item ids, other tenant: the point ids differ, so b's vectors are not a's.
        assert not np.allclose(reader.vectors(["i0"])["i0"], vectors_b[0])
    finally:
        reader.close()


def test_drop_old_keeps_published_and_recent(tmp_path):
    store = EdgeIndexStore(tmp_path)
    versions = [_build(store, "acme", n=3, seed=s)[0] for s in range(5)]
    with pytest.raises(NotFound):
        store.publish("acme", "v-does-not-exist")
    store.publish("acme", versions[3])
    assert store.drop_old("acme", keep=1) == versions[:2]
    assert store.versions("acme") == versions[2:]  # previous one kept, and the newer build too
