"""Switching adapters takes environment variables, not code: the whole pipeline and the API on the
Qdrant server adapter (qdrant-client's local mode standing in for the server, which cannot run here)."""

import pytest
from litestar.testing import TestClient

from lodestar.cdp import open_cdp
from lodestar.index import open_index_store
from lodestar.index.qdrant_server import QdrantIndexStore
from lodestar.settings import Settings
from tests.conftest import load_demo_tenant

pytestmark = pytest.mark.model  # the real all-MiniLM-L6-v2 (the fast tier: pytest -m "not model")


def test_pipeline_and_api_run_on_the_qdrant_server_adapter_by_environment_alone(tmp_path, monkeypatch):
    from pipelines.run import materialize_in_process
    from serving.app import create_app

    monkeypatch.setenv("LODESTAR_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LODESTAR_QDRANT_URL", ":memory:")
    monkeypatch.setenv("LODESTAR_QDRANT_MODE", "shared")
    settings = Settings.from_env()
    store = open_cdp(settings)
    key = load_demo_tenant(store, settings, "shop", "shop", n_items=80, n_users=20)
    store.close()

    assert materialize_in_process(str(settings.data_dir), "shop", log_level="WARNING").success
    index_store = open_index_store(settings)
    assert isinstance(index_store, QdrantIndexStore) and index_store.mode == "shared"
    version = index_store.published("shop")
    assert version and not (settings.tenant_dir("shop") / "index" / "versions").exists()  # nothing in Qdrant Edge

    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        recs = client.get("/v1/users/u0001/recommendations?k=5", headers=headers)
        assert recs.status_code == 200, recs.text
        assert len(recs.json()["items"]) == 5
        first = recs.json()["items"][0]["id"]
        similar = client.get(f"/v1/items/{first}/similar?k=3", headers=headers)
        assert similar.status_code == 200 and first not in [i["id"] for i in similar.json()["items"]]
        found = client.post("/v1/search", json={"query": "running shoe", "k": 3}, headers=headers)
        assert found.status_code == 200 and found.json()["items"]
