"""The fast tier: every asset and the API on a tiny tenant with a small deterministic embedder
(``hashing-64``: no torch, no sentence-transformers), through Dagster's public test helpers.

``pytest -m "not model"`` runs these with the unit tests in well under a minute; the tests marked
``model`` repeat the same paths with the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, build_asset_context, materialize

from assets.extracts import cdp_events, cdp_items
from assets.features import item_features
from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import demo
from lodestar.cdp import cdp_session
from lodestar.importer import import_files
from lodestar.index import open_index_store
from lodestar.keys import issue_key
from lodestar.lineage.embeddings import embedding_problems
from lodestar.settings import Settings
from pipelines.definitions import all_assets

MODEL = "hashing-64"


@pytest.fixture()
def tiny(tmp_path: Path):
    """A data dir with tenant ``acme`` (a tiny shop) imported, its settings, key and resource."""
    settings = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        key = issue_key(store, "acme")
        summary = import_files(store, settings, "acme", demo.write_demo(tmp_path / "in", "shop", n_items=48, n_users=12))
    assert summary.rejected == 0
    return settings, key, LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)


@pytest.fixture()
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        ephemeral.add_dynamic_partitions(TENANTS, ["acme"])
        yield ephemeral


def test_one_asset_invoked_directly_with_build_asset_context(tiny, instance):
    settings, _, lodestar = tiny

    def context():
        return build_asset_context(partition_key="acme", resources={"lodestar": lodestar}, instance=instance)

    items = cdp_items(context())
    assert items.metadata["rows"] == 48 and items.metadata["mode"] == "full"
    assert items.check_results[0].passed
    cdp_events(context())
    features = item_features(context())
    assert features.metadata["rows"] == 48 and features.metadata["new_texts"] == features.metadata["indexable"]
    again = cdp_items(build_asset_context(partition_key="acme", resources={"lodestar": lodestar}, instance=instance,
                                          run_tags={"lodestar/full_rebuild": "true"}))
    assert again.metadata["mode"] == "full" and again.metadata["changed"] == 48


def test_every_asset_materializes_and_the_api_serves_it(tiny, instance):
    settings, key, lodestar = tiny
    result = materialize(all_assets(), partition_key="acme", instance=instance, resources={"lodestar": lodestar})
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    published = open_index_store(settings).open_published("acme")
    try:
        assert published.reader.count() > 0 and published.model is not None
    finally:
        published.close()

    from litestar.testing import TestClient

    from serving.app import create_app

    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        client.app.state.embedder_loaded.wait(10)
        body = client.get("/v1/users/u0001/recommendations?k=5", headers=headers).json()
        assert body["strategy"] == "hybrid" and len(body["items"]) == 5
        assert body["index_version"] == published.version
        similar = client.get("/v1/items/p00001/similar?k=3", headers=headers).json()
        assert len(similar["items"]) == 3 and "p00001" not in [i["id"] for i in similar["items"]]
        found = client.post("/v1/search", json={"query": "boots", "k": 3}, headers=headers).json()
        assert found["strategy"] == "semantic_search" and len(found["items"]) == 3
        session = client.post("/v1/recommendations/session", json={"item_ids": ["p00001"], "k": 3},
                              headers=headers).json()
        assert len(session["items"]) == 3 and "p00001" not in [i["id"] for i in session["items"]]
        assert client.get("/v1/items/p00001/similar?filter=%7B%22available%22%3A1%7D", headers=headers
                          ).json()["errors"][0]["field"] == "filter.available"


def test_the_embedding_check_names_what_is_wrong():
    good = np.eye(3, 4, dtype=np.float32)
    assert embedding_problems(good, 4) == []
    bad = good.copy()
    bad[1, 2] = np.nan
    assert embedding_problems(bad, 4) == ["1 vectors contain NaN"]
    assert embedding_problems(good, 8) == ["dimension is 4, expected 8"]
