"""Previewing a configuration change on a sample of a tenant's users, before it is stored."""

import json

import pyarrow.parquet as pq
import pytest

from lodestar.cdp import open_cdp
from lodestar.cli import main
from lodestar.embed import Embedder
from lodestar.index import open_index_store
from lodestar.lineage.files import TenantFiles
from lodestar.preview import preview_change, sample_users
from lodestar.tenant_config import effective_config

pytestmark = pytest.mark.model  # the shared tenants are materialized with the real model


def _users(env) -> list[str]:
    table = pq.read_table(TenantFiles(env.settings.tenant_dir("alpha")).user_features, columns=["id", "events"])
    frame = table.to_pandas()
    return sample_users(frame.loc[frame["events"] > 0, "id"].tolist(), 12)


def _preview(env, proposed: dict, focus: str | None = None):
    published = open_index_store(env.settings).open_published("alpha")
    store = open_cdp(env.settings)
    try:
        embedder = Embedder(env.settings.embed_model, env.settings.cache_dir, models_dir=env.settings.models_dir)
        return preview_change(published, store, embedder, "alpha", effective_config(None), effective_config(proposed),
                              _users(env), 5, focus)
    finally:
        store.close()
        published.close()


def test_an_unchanged_configuration_changes_no_list(env):
    same = _preview(env, {})
    assert (same.users, same.lists_changed, same.sets_changed) == (12, 0, 0)
    assert same.mean_overlap == 1.0 and same.mean_rank_shift == 0.0 and same.entering == same.leaving == []
    assert same.pipeline_keys == []


def test_a_boost_rule_brings_its_items_in_and_says_which(env):
    store = open_cdp(env.settings)
    try:
        category = store.get_item("alpha", "p00001")["categories"][0]
    finally:
        store.close()
    boost = {"rules": [{"type": "boost", "filter": {"categories": [category]}, "amount": 1.0}]}
    result = _preview(env, boost, focus="u0003")
    assert result.lists_changed > 0 and result.sets_changed > 0 and result.mean_overlap < 1.0
    assert result.entering and result.leaving
    store = open_cdp(env.settings)
    try:
        entered = [store.get_item("alpha", item_id)["categories"] for item_id, _title, _n in result.entering]
    finally:
        store.close()
    assert all(category in categories for categories in entered), entered
    assert result.side_by_side["user_id"] == "u0003" and len(result.side_by_side["proposed"]) == 5
    assert result.side_by_side["now"] != result.side_by_side["proposed"]
    assert _preview(env, {"event_weights": {"view": 0.5}}).pipeline_keys == ["event_weights"]


def test_the_cli_previews_and_stores_nothing(env, monkeypatch, capsys):
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(env.settings.data_dir))
    change = json.dumps({"ranking": {"popularity": 0.9}})
    assert main(["tenants", "config", "alpha", "--set", change, "--preview", "--sample", "10", "--k", "5",
                 "--user", "u0003"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stored"] is False and out["preview"]["users"] == 10
    assert out["preview"]["side_by_side"]["user_id"] == "u0003"
    store = open_cdp(env.settings)
    try:
        assert "ranking" not in store.get_tenant("alpha")["config"]  # nothing stored
    finally:
        store.close()
    assert main(["tenants", "config", "alpha", "--preview"]) == 2
    assert "--preview shows what --set would change" in capsys.readouterr().err


def test_the_config_api_reads_previews_and_stores_for_admin_keys_only(env):
    from litestar.testing import TestClient

    from lodestar.keys import issue_key
    from serving.app import create_app

    store = open_cdp(env.settings)
    try:
        read_key = issue_key(store, "alpha", ("read",), label="test: read only")
        before = store.get_tenant("alpha")["config"]
    finally:
        store.close()
    admin = {"Authorization": f"Bearer {env.keys['alpha']}"}
    with TestClient(create_app(env.settings)) as client:
        view = client.get("/v1/config", headers=admin).json()
        assert view["stored"] == before and view["effective"]["ranking"]["collab"] > 0
        assert client.get("/v1/config", headers={"Authorization": f"Bearer {read_key}"}).status_code == 403

        change = {"rules": [{"type": "pin", "item_id": "p00002", "position": 1}]}
        preview = client.post("/v1/config/preview", json={"config": change, "sample": 8, "k": 5, "user_id": "u0003"},
                              headers=admin)
        assert preview.status_code == 200, preview.text
        body = preview.json()
        assert body["users"] == 8 and body["lists_changed"] > 0
        assert body["side_by_side"]["proposed"][0]["id"] == "p00002"
        assert client.get("/v1/config", headers=admin).json()["stored"] == before  # a preview stores nothing

        bad = client.put("/v1/config", json={"config": {"rules": [{"type": "pin", "item_id": "p1", "position": 0}]}},
                         headers=admin)
        assert bad.status_code == 422 and "rules[0].position" in bad.text
        quotas = client.put("/v1/config", json={"config": {"quotas": {"requests_per_second": 0}}}, headers=admin)
        assert quotas.status_code == 403 and "operator" in quotas.text
        try:
            stored = client.put("/v1/config", json={"config": change}, headers=admin)
            assert stored.status_code == 200 and stored.json()["stored"]["rules"] == change["rules"]
            first = client.get("/v1/users/u0003/recommendations?k=3", headers=admin).json()["items"][0]["id"]
            assert first == "p00002"  # the next request ranks with the stored rule
        finally:
            reset = client.put("/v1/config", json={"config": before, "replace": True}, headers=admin)
            assert reset.status_code == 200 and reset.json()["stored"] == before


def test_every_change_is_audited_and_an_earlier_configuration_restores_in_one_step(env, monkeypatch, capsys):
    from litestar.testing import TestClient

    from lodestar.keys import key_id_of
    from serving.app import create_app

    admin = {"Authorization": f"Bearer {env.keys['alpha']}"}
    actor = f"key:{key_id_of(env.keys['alpha'])}"
    store = open_cdp(env.settings)
    try:
        original = store.get_tenant("alpha")["config"]
    finally:
        store.close()
    with TestClient(create_app(env.settings)) as client:
        first = {"ranking": {"content": 0.25}}
        second = {"ranking": {"content": 0.5}}
        try:
            assert client.put("/v1/config", json={"config": first}, headers=admin).status_code == 200
            assert client.put("/v1/config", json={"config": second}, headers=admin).status_code == 200
            history = client.get("/v1/config/history", headers=admin).json()["entries"]
            assert [e["after"]["ranking"]["content"] for e in history[:2]] == [0.5, 0.25]
            assert history[0]["actor"] == actor and history[0]["before"]["ranking"]["content"] == 0.25
            restored = client.post(f"/v1/config/restore/{history[1]['id']}", headers=admin)
            assert restored.status_code == 200 and restored.json()["stored"]["ranking"]["content"] == 0.25
            assert client.post("/v1/config/restore/nope", headers=admin).status_code == 404
            key = client.post("/v1/keys", json={"scopes": ["read"], "label": "audited"}, headers=admin).json()
            assert client.delete(f"/v1/keys/{key['key_id']}", headers=admin).status_code == 200
            log = client.get("/v1/audit?limit=4", headers=admin).json()["entries"]
            assert [(e["action"], e["actor"]) for e in log] == [
                ("key.revoke", actor), ("key.create", actor), ("config.restore", actor), ("config.set", actor)]
            assert log[0]["target"] == key["key_id"] and log[2]["target"] == history[1]["id"]
            # the CLI writes the same log, and restores too
            monkeypatch.setenv("LODESTAR_DATA_DIR", str(env.settings.data_dir))
            assert main(["tenants", "config", "alpha", "--history"]) == 0
            lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert lines[0]["action"] == "config.restore" and lines[-1]["after"] is not None
            assert main(["tenants", "config", "alpha", "--restore", history[0]["id"]]) == 0
            capsys.readouterr()
            newest = client.get("/v1/audit?limit=1", headers=admin).json()["entries"][0]
            assert newest["action"] == "config.restore" and newest["actor"].startswith("cli:")
            assert newest["after"]["ranking"]["content"] == 0.5
        finally:
            client.put("/v1/config", json={"config": original, "replace": True}, headers=admin)


def test_a_tenant_admin_never_changes_quotas_or_another_tenants_config(env):
    from litestar.testing import TestClient

    from lodestar.errors import Conflict
    from serving.app import create_app

    store = open_cdp(env.settings)
    try:
        original = store.get_tenant("alpha")["config"]
        record = store.get_tenant("alpha")
        store.set_tenant_config("alpha", {**original, "quotas": {"items": 5000}})
        with pytest.raises(Conflict):  # a configuration read before a change is not written over it
            store.set_tenant_config("alpha", original, if_updated_at=record["updated_at"])
    finally:
        store.close()
    alpha = {"Authorization": f"Bearer {env.keys['alpha']}"}
    beta = {"Authorization": f"Bearer {env.keys['beta']}"}
    with TestClient(create_app(env.settings)) as client:
        try:
            replaced = client.put("/v1/config", json={"config": {"ranking": {"content": 0.3}}, "replace": True},
                                  headers=alpha).json()
            assert replaced["stored"] == {"ranking": {"content": 0.3}, "quotas": {"items": 5000}}  # kept
            entry = client.get("/v1/config/history?limit=1", headers=alpha).json()["entries"][0]
            assert client.post(f"/v1/config/restore/{entry['id']}", headers=beta).status_code == 404
            assert client.get("/v1/config/history", headers=beta).json()["entries"] == [] or all(
                e["id"] != entry["id"] for e in client.get("/v1/config/history", headers=beta).json()["entries"])
            too_big = client.put("/v1/config", json={"config": {"collab": {"candidates": 100000}}}, headers=alpha)
            assert too_big.status_code == 422 and "collab.candidates: at most 2000" in too_big.text
        finally:
            reset = client.put("/v1/config", json={"config": original, "replace": True}, headers=alpha)
            assert reset.status_code == 200
    store = open_cdp(env.settings)
    try:
        store.set_tenant_config("alpha", original)  # the operator's quota of this test gone too
    finally:
        store.close()
