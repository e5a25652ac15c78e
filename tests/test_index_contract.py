"""The index port's contract, run against every adapter: Qdrant Edge (embedded), the Qdrant server
adapter on qdrant-client's local mode in both layouts, and a real Qdrant server in both layouts
when LODESTAR_QDRANT_URL is set (reported as skipped otherwise)."""

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from lodestar.errors import NotFound
from lodestar.filters import parse_filter
from lodestar.index.edge import EdgeIndexReader, EdgeIndexStore

pytestmark = pytest.mark.contract

SERVER = os.environ.get("LODESTAR_QDRANT_URL", "")
NO_SERVER = "LODESTAR_QDRANT_URL is not set: no Qdrant server to run the contract against"


@pytest.fixture(params=["edge", "qdrant-local", "qdrant-local-shared", "qdrant-server", "qdrant-server-shared"])
def index(request, tmp_path):
    """(store, tenant name maker); server runs use unique tenant names and clean up after themselves."""
    kind = request.param
    if kind == "edge":
        yield EdgeIndexStore(tmp_path), lambda name: name
        return
    from qdrant_client import QdrantClient

    from lodestar.index.qdrant_server import QdrantIndexStore, client_for

    mode = "shared" if kind.endswith("shared") else "collection"
    if kind.startswith("qdrant-local"):
        yield QdrantIndexStore(QdrantClient(location=":memory:"), mode), lambda name: name
        return
    if not SERVER.startswith("http"):
        pytest.skip(NO_SERVER)
    client = client_for(SERVER, os.environ.get("LODESTAR_QDRANT_API_KEY") or None)
    run = f"t{uuid.uuid4().hex[:8]}-"
    used: list[str] = []

    def name(tenant: str) -> str:
        used.append(run + tenant)
        return run + tenant

    yield QdrantIndexStore(client, mode), name
    from qdrant_client import models

    for collection in client.get_collections().collections:
        if collection.name.startswith(f"lodestar--{run}"):
            client.delete_collection(collection.name)
    for shared in ("lodestar--shared", "lodestar--models"):
        if used and client.collection_exists(shared):
            client.delete(shared, points_selector=models.FilterSelector(filter=models.Filter(
                must=[models.FieldCondition(key="tenant_id", match=models.MatchAny(any=used))])))


def _build(store, tenant, n=20, seed=0, base=None):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(n)]
    payloads = [{"title": f"Item {k}", "popularity": float(k) / n, "categories": ["even" if k % 2 == 0 else "odd"],
                 "tags": [], "attributes": {"price": float(k)}} for k in range(n)]
    builder = store.build(tenant, 8, base=base)
    builder.upsert(ids, vectors, payloads)
    assert builder.finish() == n
    return builder.version, ids, vectors


def test_build_publish_query(index):
    store, name = index
    acme = name("acme")
    version, ids, vectors = _build(store, acme)
    assert store.published(acme) is None  # built is not published
    store.publish(acme, version, {"points": 20, "ndcg@10": 0.25})
    assert store.published(acme) == version
    assert store.published_record(acme)["ndcg@10"] == 0.25
    reader = store.open(acme, version)
    try:
        assert reader.count() == 20
        hits = reader.nearest(vectors[3], 5)
        assert hits[0].item_id == "i3" and hits[0].payload["title"] == "Item 3"
        assert "i3" not in [h.item_id for h in reader.nearest(vectors[3], 5, exclude=["i3"])]
        popular = reader.popular(3, exclude=["i19"])
        assert [h.item_id for h in popular] == ["i18", "i17", "i16"]
        assert np.allclose(reader.vectors(["i1", "missing"])["i1"], vectors[1], atol=1e-6)
        assert reader.get("missing") is None and reader.get("i2").payload["title"] == "Item 2"
        with_vectors = reader.nearest(vectors[4], 1, with_vectors=True)[0]
        assert np.allclose(with_vectors.vector, vectors[4], atol=1e-6)
    finally:
        reader.close()


def test_filters_apply_to_every_query(index):
    store, name = index
    acme = name("acme")
    version, ids, vectors = _build(store, acme)
    reader = store.open(acme, version)
    try:
        cheap_even = parse_filter({"categories": ["even"], "attributes": {"price": {"lte": 9}}})
        found = reader.nearest(vectors[2], 20, item_filter=cheap_even)
        assert sorted(h.item_id for h in found) == ["i0", "i2", "i4", "i6", "i8"]
        assert [h.item_id for h in reader.popular(2, item_filter=cheap_even)] == ["i8", "i6"]
        assert reader.nearest(vectors[2], 5, item_filter=parse_filter({"available": False})) == []
        listed = parse_filter({"attributes": {"price": {"in": [3, 5]}}})
        assert sorted(h.item_id for h in reader.nearest(vectors[0], 20, item_filter=listed)) == ["i3", "i5"]
    finally:
        reader.close()


def test_candidates_are_the_nearest_ids_and_popularity_as_arrays(index):
    """What ranking reads of a candidate query (``IndexReader.candidates``): the ids, scores and
    popularity of ``nearest``'s hits, in order, with exclusions and filters applied."""
    from lodestar.index import CANDIDATE_FIELDS

    store, name = index
    acme = name("acme")
    version, ids, vectors = _build(store, acme, n=30)
    reader = store.open(acme, version)
    try:
        for query, exclude, item_filter in ((vectors[3], ["i3", "i4"], None), (-vectors[7], [], None),
                                            (vectors[1], ["i9"], parse_filter({"categories": ["odd"]}))):
            hits = reader.nearest(query, 12, exclude, item_filter=item_filter, fields=CANDIDATE_FIELDS)
            found = reader.candidates(query, 12, exclude, item_filter=item_filter)
            assert len(found) == len(hits) == 12
            assert found.item_ids == [h.item_id for h in hits]
            assert np.allclose(found.scores, [h.score for h in hits], atol=1e-5)
            assert found.popularity.tolist() == [h.payload["popularity"] for h in hits]
            assert np.allclose(found.popularity, [int(i[1:]) / 30 for i in found.item_ids])
            assert not set(exclude) & set(found.item_ids)
        assert len(reader.candidates(vectors[0], 5, item_filter=parse_filter({"available": False}))) == 0
    finally:
        reader.close()


def test_tenants_are_kept_apart(index):
    store, name = index
    a, b = name("a"), name("b")
    va, _, _ = _build(store, a, seed=1)
    vb, _, vectors_b = _build(store, b, n=5, seed=2)
    store.publish(a, va)
    store.publish(b, vb)
    assert store.versions(a) == [va] and store.versions(b) == [vb]
    reader = store.open(a, va)
    try:
        assert reader.count() == 20
        # Same item ids, other tenant: b's vectors are not a's.
        assert not np.allclose(reader.vectors(["i0"])["i0"], vectors_b[0])
        assert len(reader.nearest(vectors_b[0], 50)) == 20
    finally:
        reader.close()


def test_a_version_built_from_a_base_leaves_the_base_untouched(index):
    store, name = index
    acme = name("acme")
    base, ids, vectors = _build(store, acme, n=10)
    store.publish(acme, base)
    builder = store.build(acme, 8, base=base)
    fresh = np.eye(8, dtype=np.float32)[:1]
    builder.upsert(["new"], fresh, [{"title": "New", "popularity": 0.5, "categories": [], "tags": [], "attributes": {}}])
    builder.delete(["i0", "i1"])
    assert builder.finish() == 9
    derived = store.open(acme, builder.version)
    original = store.open(acme, base)
    try:
        assert derived.get("i0") is None and derived.get("new").payload["title"] == "New"
        assert np.allclose(derived.vectors(["i5"])["i5"], vectors[5], atol=1e-6)
        assert original.count() == 10 and original.get("i0") is not None and original.get("new") is None
    finally:
        derived.close()
        original.close()
    with pytest.raises(NotFound):
        store.build(acme, 8, base="v-does-not-exist")


def test_drop_old_keeps_published_and_recent(index):
    store, name = index
    acme = name("acme")
    versions = [_build(store, acme, n=3, seed=s)[0] for s in range(5)]
    assert store.versions(acme) == versions  # sortable by creation
    with pytest.raises(NotFound):
        store.publish(acme, "v-does-not-exist")
    with pytest.raises(NotFound):
        store.open(acme, "v-does-not-exist")
    store.publish(acme, versions[3])
    assert store.drop_old(acme, keep=1) == versions[:2]
    assert store.versions(acme) == versions[2:]  # previous one kept, and the newer build too
    reader = store.open(acme, versions[3])
    try:
        assert reader.count() == 3
    finally:
        reader.close()


def _model():
    import pandas as pd

    from lodestar import collab
    from lodestar.tenant_config import TenantConfig

    baskets = [["i0", "i1", "i2"], ["i1", "i2"], ["i2", "i3", "i4"], ["i0", "i4"], ["i3", "i4", "i5"]]
    pairs = pd.DataFrame([(f"u{u}", i) for u, items in enumerate(baskets) for i in items], columns=["user_id", "item_id"])
    return collab.fit(pairs, [f"i{k}" for k in range(6)], TenantConfig())


def test_a_published_version_opens_with_its_model(index, monkeypatch):
    """The model is part of the version: ``open_published`` returns both, for every adapter (the
    Qdrant adapters keep it in Qdrant, split in chunks: a tiny chunk size makes this one span several)."""
    from lodestar.index import qdrant_server

    monkeypatch.setattr(qdrant_server, "MODEL_CHUNK", 1000)
    store, name = index
    acme = name("acme")
    assert store.open_published(acme) is None
    model = _model()
    ids = [f"i{k}" for k in range(6)]
    vectors = np.eye(8, dtype=np.float32)[:6]
    builder = store.build(acme, 8, collab_dimension=model.factors.shape[1])
    builder.upsert(ids, vectors, [{"title": i, "popularity": 0.0, "categories": [], "tags": [], "attributes": {}}
                                  for i in ids], model.factors_for(ids))
    builder.attach_model(model)
    builder.finish()
    store.publish(acme, builder.version, {"points": 6})
    published = store.open_published(acme)
    try:
        assert published.version == builder.version and published.record["points"] == 6
        assert published.reader.count() == 6 and published.model.kind == model.kind
        assert published.model.item_ids == model.item_ids
        weights = {"i0": 1.0, "i2": 0.5}
        assert np.allclose(published.model.scores(weights, ids), model.scores(weights, ids), atol=1e-6)
    finally:
        published.close()
    # A version built without a model opens without one; dropping versions drops their models.
    plain, _, _ = _build(store, acme, n=3)
    store.publish(acme, plain)
    assert store.open_published(acme).model is None
    assert store.drop_old(acme, keep=0) == [builder.version]
    if isinstance(store, EdgeIndexStore):
        assert not (store.data_dir / "tenants" / acme / "models" / builder.version).exists()
    else:
        assert qdrant_server._ModelBlobs(store.client).load(acme, builder.version) is None


def test_tenants_whose_names_share_a_prefix_are_kept_apart(index):
    """Tenant names may hold '-': a version of ``a`` is never one of ``a-x`` or ``a--b``, and
    publishing and dropping ``a``'s versions leaves theirs alone."""
    store, name = index
    a, ax, ab = name("a"), name("a-x"), name("a--b")
    va, _, _ = _build(store, a, n=3)
    vax, _, _ = _build(store, ax, n=3)
    vab, _, _ = _build(store, ab, n=3)
    store.publish(ax, vax)
    store.publish(ab, vab)
    assert store.versions(a) == [va] and store.versions(ax) == [vax] and store.versions(ab) == [vab]
    store.publish(a, va)
    newer, _, _ = _build(store, a, n=3)
    store.publish(a, newer)
    assert store.drop_old(a, keep=0) == [va]
    assert store.versions(ax) == [vax] and store.published(ax) == vax
    assert store.versions(ab) == [vab] and store.published(ab) == vab


def test_edge_sidecar_answers_as_the_engine_does(tmp_path):
    """A finished Edge version carries its content vectors and popularity beside it; readers answer
    vectors, points and candidate queries from it, exactly as from the engine (a version without
    it, built before it existed, is still read from the engine)."""
    from lodestar.index import CANDIDATE_FIELDS
    from lodestar.index.edge import ContentMatrix

    store = EdgeIndexStore(tmp_path)
    version, ids, vectors = _build(store, "acme", n=30)
    with_sidecar = store.open("acme", version)
    model_dir = tmp_path / "tenants" / "acme" / "models" / version
    assert (model_dir / ContentMatrix.IDS).is_file()
    without = EdgeIndexReader("acme", version, with_sidecar._shard, None)
    try:
        some = ["i3", "i7", "missing", "i3"]
        a, b = with_sidecar.vectors(some), without.vectors(some)
        assert a.keys() == b.keys() == {"i3", "i7"} and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
        pa, pb = with_sidecar.points(some), without.points(some)
        assert {k: v.payload for k, v in pa.items()} == {k: v.payload for k, v in pb.items()}
        assert all(np.allclose(pa[k].vector, pb[k].vector, atol=1e-6) for k in pa)
        for query in (vectors[5], -vectors[9]):
            x = with_sidecar.nearest(query, 12, exclude=["i1", "i2"], fields=CANDIDATE_FIELDS)
            y = without.nearest(query, 12, exclude=["i1", "i2"], fields=CANDIDATE_FIELDS)
            assert [(h.item_id, round(h.score, 5), h.payload["popularity"]) for h in x] == \
                   [(h.item_id, round(h.score, 5), h.payload["popularity"]) for h in y]
            assert "i1" not in [h.item_id for h in x]
            cx = with_sidecar.candidates(query, 12, exclude=["i1", "i2"])  # from the sidecar's rows
            cy = without.candidates(query, 12, exclude=["i1", "i2"])  # from the engine's payloads
            assert cx.item_ids == cy.item_ids == [h.item_id for h in x]
            assert cx.popularity.tolist() == cy.popularity.tolist() == [h.payload["popularity"] for h in x]
            assert np.allclose(cx.scores, cy.scores, atol=1e-5)
    finally:
        with_sidecar.close()


def test_edge_sidecar_of_a_derived_version_is_the_base_one_plus_the_changes(tmp_path):
    """A version copied from another and changed in a few items takes the other's sidecar rows for
    the rest: the same vectors and popularity, per item, as reading every point back would give."""
    from lodestar.index.edge import ContentMatrix

    store = EdgeIndexStore(tmp_path)
    base, ids, vectors = _build(store, "acme", n=30)
    builder = store.build("acme", 8, base=base)
    moved = -vectors[4]
    builder.upsert(["i4", "new"], np.stack([moved, vectors[0]]),
                   [{"title": "moved", "popularity": 0.99}, {"title": "new", "popularity": 0.5}])
    builder.delete(["i7", "never-there"])

    def not_read_back(*_args):
        raise AssertionError("the derived version's sidecar was read back from the engine")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ContentMatrix, "from_shard", not_read_back)
        assert builder.finish() == 30
    models = tmp_path / "tenants" / "acme" / "models"
    reader = store.open("acme", builder.version)
    derived = ContentMatrix.load(models / builder.version, reader._ids)
    try:
        read_back = ContentMatrix.from_shard("acme", reader._shard)
    finally:
        reader.close()
    assert sorted(derived.item_ids) == sorted(read_back.item_ids) == sorted([*(set(ids) - {"i7"}), "new"])
    for item_id in read_back.item_ids:
        a, b = derived.rows[item_id], read_back.rows[item_id]
        assert np.array_equal(derived.matrix[a], read_back.matrix[b]), item_id
        assert derived.popularity[a] == read_back.popularity[b], item_id
    assert np.allclose(derived.matrix[derived.rows["i4"]], moved, atol=1e-6)
    assert derived.popularity[derived.rows["i4"]] == 0.99
    base_rows = ContentMatrix.load(models / base, reader._ids)
    assert np.allclose(base_rows.matrix[base_rows.rows["i4"]], vectors[4], atol=1e-6)  # the base is untouched


def test_edge_versions_search_on_the_asking_thread(tmp_path):
    """New versions, and versions derived from an older one, keep the engine's search on the thread
    that asks (``SEARCH_THREADS``): no pool of search threads is started when a version opens."""
    import json

    from lodestar.index.edge import SEARCH_THREADS

    store = EdgeIndexStore(tmp_path)
    base, _ids, vectors = _build(store, "acme", n=30)
    config = tmp_path / "tenants" / "acme" / "index" / "versions" / base / "edge_config.json"
    assert json.loads(config.read_text())["max_search_threads"] == SEARCH_THREADS == 1
    older = json.loads(config.read_text())
    del older["max_search_threads"]  # as versions built before it were
    config.write_text(json.dumps(older))
    builder = store.build("acme", 8, base=base)
    builder.upsert(["new"], vectors[:1], [{"title": "new", "popularity": 0.5}])
    builder.finish()
    derived = config.parent.parent / builder.version / "edge_config.json"
    assert json.loads(derived.read_text())["max_search_threads"] == 1
    reader = store.open("acme", builder.version)
    try:
        before = _search_pool_cpu_ticks()
        for n in range(10_000):  # with the engine's default pool, its threads use 20-35 ticks for these
            assert reader.nearest(vectors[n % 30], 3)
        assert _search_pool_cpu_ticks() - before <= 2  # a tick or two of noise at most
    finally:
        reader.close()


def test_an_older_edge_version_searches_on_the_asking_thread_once_opened(tmp_path, monkeypatch):
    """A version built before ``SEARCH_THREADS`` gains the setting when a store opens it: its
    config is rewritten with it (nothing else changes) and no pool of search threads is started;
    where the config cannot be written, the version is read as it is."""
    import json

    from lodestar.index import edge

    store = EdgeIndexStore(tmp_path)
    version, _ids, vectors = _build(store, "acme", n=30)
    config = tmp_path / "tenants" / "acme" / "index" / "versions" / version / "edge_config.json"
    written = json.loads(config.read_text())
    older = {name: value for name, value in written.items() if name != "max_search_threads"}
    config.write_text(json.dumps(older))  # as versions built before it were

    def opened_threads() -> tuple[EdgeIndexReader, int]:
        before = _search_pool_threads()
        reader = store.open("acme", version)
        return reader, _search_pool_threads() - before

    monkeypatch.setattr(edge.os, "replace", lambda *_: (_ for _ in ()).throw(PermissionError("read-only")))
    reader, started = opened_threads()  # a data dir this process may not write: read as it is
    try:
        assert json.loads(config.read_text()) == older and reader.nearest(vectors[1], 3)[0].item_id == "i1"
        assert started > 1 or (os.cpu_count() or 1) == 1  # the engine's default pool (8 threads on 2 cores)
    finally:
        reader.close()
    monkeypatch.undo()
    reader, started = opened_threads()
    try:
        assert json.loads(config.read_text()) == written  # the setting, and nothing else, added
        leftovers = [p.name for p in config.parent.parent.rglob("*.tmp")]
        assert leftovers == []  # neither the refused write nor this one left a file behind
        assert started <= 1
        before = _search_pool_cpu_ticks()
        for n in range(10_000):
            assert reader.nearest(vectors[n % 30], 3)
        assert _search_pool_cpu_ticks() - before <= 2
    finally:
        reader.close()


def _search_pool_threads() -> int:
    """How many of the engine's search-pool threads this process has."""
    return sum(1 for _fields in _search_pool_stats())


def _search_pool_cpu_ticks() -> int:
    """CPU clock ticks the engine's search-pool threads of this process have used."""
    return sum(int(fields[11]) + int(fields[12]) for fields in _search_pool_stats())


def _search_pool_stats():
    """The stat fields after the name of each of this process's engine search-pool threads."""
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue  # (ENOENT once its entry is gone, ESRCH while it is going)
        if stat[stat.index("(") + 1:stat.rindex(")")].startswith("edge-search"):
            yield stat.rsplit(")", 1)[1].split()


def test_edge_indexes_payload_fields_of_large_versions_only_and_answers_the_same(tmp_path, monkeypatch):
    """Payload indexes cost an open tenant megabytes each: a small version has none (filters scan
    its payloads; popularity order comes from the sidecar), a large one indexes the filter fields,
    popularity and common attributes. Both answer every query alike."""
    import lodestar.index.edge as edge

    answers = {}
    for size, threshold in (("small", 10_000), ("large", 10)):
        monkeypatch.setattr(edge, "FILTER_INDEX_MIN_POINTS", threshold)
        store = EdgeIndexStore(tmp_path / size)
        version, _ids, vectors = _build(store, "acme", n=30)
        reader = store.open("acme", version)
        try:
            indexed = set(reader._shard.info().payload_schema)
            if size == "small":
                assert indexed == set()
            else:
                assert {"item_id", "categories", "tags", "popularity", "attributes.price"} <= indexed
            odd_cheap = parse_filter({"categories": ["odd"], "attributes": {"price": {"lt": 20}}})
            answers[size] = (
                [h.item_id for h in reader.popular(5, exclude=["i29"])],
                [(h.item_id, h.score) for h in reader.popular(4, exclude=["i19"], item_filter=odd_cheap)],
                [h.item_id for h in reader.nearest(vectors[2], 6, item_filter=odd_cheap)],
                reader.popular(3, item_filter=parse_filter({"categories": ["none"]})),
            )
        finally:
            reader.close()
    assert answers["small"] == answers["large"]
    assert answers["small"][0] == ["i28", "i27", "i26", "i25", "i24"]
    assert [i for i, _ in answers["small"][1]] == ["i17", "i15", "i13", "i11"] and answers["small"][3] == []


def test_edge_filters_on_list_valued_attributes_match_as_qdrant_does_without_an_index(tmp_path, monkeypatch):
    """A range on a list-valued attribute matches when any element is in it: the sidecar's popular
    order (a small version, filters checked in Python) answers as Qdrant does (a large one)."""
    import lodestar.index.edge as edge

    answers = {}
    for size, threshold in (("small", 10_000), ("large", 10)):
        monkeypatch.setattr(edge, "FILTER_INDEX_MIN_POINTS", threshold)
        store = EdgeIndexStore(tmp_path / size)
        builder = store.build("acme", 4)
        builder.upsert([f"i{k}" for k in range(20)], np.eye(20, 4, dtype=np.float32) + 0.1,
                       [{"title": f"t{k}", "popularity": k / 20, "attributes": {"sizes": [k % 5, 40]}}
                        for k in range(20)])
        builder.finish()
        reader = store.open("acme", builder.version)
        try:
            answers[size] = [
                [h.item_id for h in reader.popular(20, item_filter=parse_filter({"attributes": {"sizes": f}}))]
                for f in ({"gte": 39}, {"lt": 1}, {"gt": 40}, 3)
            ]
        finally:
            reader.close()
    assert answers["small"] == answers["large"]
    assert len(answers["small"][0]) == 20 and answers["small"][2] == []
    assert answers["small"][1] == ["i15", "i10", "i5", "i0"] and answers["small"][3] == ["i18", "i13", "i8", "i3"]


def _build_named(store, tenant, numbered, n=30, base=None, changes=None):
    """A version whose points are named by number or, as versions built before 2026-11-22 were,
    by UUID (the builder's naming set before anything is written)."""
    from lodestar.index.edge import PointIds

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(n)]
    payloads = [{"title": f"Item {k}", "popularity": float(k) / n, "categories": ["even" if k % 2 == 0 else "odd"],
                 "tags": [], "attributes": {}} for k in range(n)]
    builder = store.build(tenant, 8, base=base)
    if base is None:
        builder.ids = PointIds(tenant, numbered)
        builder.upsert(ids, vectors, payloads)
    else:
        assert builder.ids.numbered is numbered  # a derived version keeps its base's naming
        builder.upsert(*changes)
    builder.finish()
    return builder.version, vectors


def test_edge_versions_named_by_uuid_or_by_number_answer_alike(tmp_path):
    """Versions built since 2026-11-22 name their points by a 64-bit number (the engine hands those
    back without a Python UUID each); versions built before, by UUID. Both are read alike, with
    exclusions, vectors, points and single items, and a version derived from either keeps its
    base's naming."""
    store = EdgeIndexStore(tmp_path)
    answers = {}
    for numbered in (False, True):
        tenant = f"acme-{numbered}"
        version, vectors = _build_named(store, tenant, numbered)
        reader = store.open(tenant, version)
        try:
            assert reader._ids.numbered is numbered
            assert isinstance(reader._shard.retrieve([reader._ids.one("i3")], with_payload=False,
                                                     with_vector=False)[0].id, int if numbered else uuid.UUID)
            hits = reader.nearest(vectors[5], 12, exclude=["i1", "i5"], fields=("item_id", "popularity"))
            full = reader.nearest(vectors[5], 12, exclude=["i1", "i5"])
            answers[numbered] = (
                [(h.item_id, round(h.score, 5), h.payload["popularity"]) for h in hits],
                [(h.item_id, round(h.score, 5)) for h in full],
                sorted(reader.vectors(["i2", "i9", "missing"])), sorted(reader.points(["i2", "missing"])),
                reader.get("i4").payload["title"], reader.get("missing"),
                [h.item_id for h in reader.popular(5, exclude=["i29"])])
            assert not {"i1", "i5"} & ({a[0] for a in answers[numbered][0]} | {a[0] for a in answers[numbered][1]})
        finally:
            reader.close()
        moved = np.stack([-vectors[4], vectors[0]])
        derived, _ = _build_named(store, tenant, numbered, base=version, changes=(
            ["i4", "new"], moved, [{"title": "moved", "popularity": 0.99}, {"title": "new", "popularity": 0.5}]))
        reader = store.open(tenant, derived)
        try:
            assert reader._ids.numbered is numbered
            assert reader.get("i4").payload["title"] == "moved" and reader.get("new") is not None
            assert [h.item_id for h in reader.nearest(-vectors[4], 1, fields=("item_id", "popularity"))] == ["i4"]
        finally:
            reader.close()
    assert answers[False] == answers[True]
    assert store.build("fresh", 8).ids.numbered  # a new version is named by number


def test_one_tenant_s_exclusions_follow_the_naming_of_the_version_asked(tmp_path):
    """A tenant's UUID-named version and its next, numbered one, asked with the very same set of
    excluded items (as a user's kept state holds it across a new version): each gets the condition
    of its own naming."""
    store = EdgeIndexStore(tmp_path)
    old, vectors = _build_named(store, "acme", numbered=False)
    new, _ = _build_named(store, "acme", numbered=True)
    excluded = frozenset(f"i{k}" for k in range(0, 30, 2))
    readers = [store.open("acme", old), store.open("acme", new)]
    try:
        for _ in range(2):  # the second time from the kept conditions
            for reader in readers:
                found = [h.item_id for h in reader.nearest(vectors[3], 30, exclude=excluded, fields=("item_id",))]
                assert sorted(found) == sorted(f"i{k}" for k in range(1, 30, 2)), reader._ids.numbered
    finally:
        for reader in readers:
            reader.close()


def test_two_items_sharing_a_point_number_refuse_the_version(tmp_path, monkeypatch):
    """A 64-bit name can collide (about one chance in 10^9 at 200,000 items): the version is refused
    with both items named, never written with one silently replacing the other."""
    import lodestar.index.edge as edge
    from lodestar.errors import IndexEngineError

    def number(_tenant, item_id):
        return 7 if item_id in ("a", "b") else 10 + sum(map(ord, item_id))

    monkeypatch.setattr(edge, "point_number", number)
    monkeypatch.setattr(edge, "point_numbers", lambda tenant, item_ids: [number(tenant, i) for i in item_ids])
    store = EdgeIndexStore(tmp_path)
    vectors = np.eye(8, dtype=np.float32)[:3]
    payloads = [{"title": t, "popularity": 0.1} for t in "xyz"]
    builder = store.build("acme", 8)
    with pytest.raises(IndexEngineError, match="'a' and 'b'"):  # in one build
        builder.upsert(["a", "c", "b"], vectors, payloads)

    base = store.build("acme", 8)
    base.upsert(["a", "c", "d"], vectors, payloads)
    base.finish()
    derived = store.build("acme", 8, base=base.version)
    derived.upsert(["b"], vectors[:1], payloads[:1])  # takes a's point, a kept item
    with pytest.raises(IndexEngineError, match="'a' and 'b'"):
        derived.finish()

    derived = store.build("acme", 8, base=base.version)
    derived.upsert(["b"], vectors[:1], payloads[:1])  # takes a's point, and a is deleted after it
    with pytest.raises(IndexEngineError, match="'b' and 'a'"):
        derived.delete(["a"])

    derived = store.build("acme", 8, base=base.version)
    derived.delete(["a"])  # deleted first, then b takes the free number: nothing is lost
    derived.upsert(["b"], vectors[:1], payloads[:1])
    assert derived.finish() == 3
