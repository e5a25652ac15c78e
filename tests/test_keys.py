"""API keys with scopes, listed and revoked (CLI, HTTP and the operator key), and a CDP store made
before scopes existed keeps its keys working with every scope."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from lodestar.cdp import cdp_session
from lodestar.cdp.sqlite import SqliteCdpStore
from lodestar.keys import issue_key, principal_for_key
from lodestar.settings import Settings
from serving.app import create_app
from tests.helpers import OPERATOR_KEY, app_settings_with, bearer


@pytest.fixture()
def app_settings(tmp_path):
    return app_settings_with(tmp_path, "acme", "zeta")


_bearer = bearer


def test_each_scope_opens_only_its_routes(app_settings):
    with cdp_session(app_settings) as store:
        read = issue_key(store, "acme", ("read",))
        events = issue_key(store, "acme", ("events",))
        admin = issue_key(store, "acme", ("admin",))
    event = {"events": [{"user_id": "u1", "item_id": "i1", "type": "view", "ts": time.time() - 5}]}
    with TestClient(create_app(app_settings)) as client:
        # read: recommendations (503 here: no index yet, but past the guard), nothing else
        assert client.get("/v1/users/u1/recommendations", headers=_bearer(read)).status_code == 503
        for method, url, body in (("post", "/v1/events", event), ("get", "/v1/users/u1/preferences", None),
                                  ("delete", "/v1/users/u1", None), ("get", "/v1/keys", None)):
            response = client.request(method.upper(), url, json=body, headers=_bearer(read))
            assert response.status_code == 403 and "lacks the" in response.json()["detail"], url
        assert client.post("/v1/events", json=event, headers=_bearer(events)).json()["stored"] == 1
        assert client.get("/v1/users/u1/recommendations", headers=_bearer(events)).status_code == 403
        assert client.delete("/v1/users/u1", headers=_bearer(admin)).json()["events"] == 1
        assert client.post("/v1/events", json=event, headers=_bearer(admin)).status_code == 403


def test_keys_are_listed_issued_and_revoked_over_http(app_settings):
    with cdp_session(app_settings) as store:
        admin = issue_key(store, "acme", ("admin",))
    with TestClient(create_app(app_settings)) as client:
        created = client.post("/v1/keys", json={"scopes": ["read"], "label": "web shop"}, headers=_bearer(admin))
        assert created.status_code == 201
        new = created.json()
        assert new["scopes"] == ["read"] and new["api_key"].startswith(f"lsk_{new['key_id']}_")
        assert client.get("/v1/users/u1/recommendations", headers=_bearer(new["api_key"])).status_code == 503
        listed = client.get("/v1/keys", headers=_bearer(admin)).json()["keys"]
        assert {k["key_id"]: k["label"] for k in listed}[new["key_id"]] == "web shop"
        assert new["api_key"] not in json.dumps(listed)
        assert client.delete(f"/v1/keys/{new['key_id']}", headers=_bearer(admin)).json()["revoked_at"] > 0
        assert client.get("/v1/users/u1/recommendations", headers=_bearer(new["api_key"])).status_code == 401
        assert client.delete("/v1/keys/nope", headers=_bearer(admin)).status_code == 404
        bad = client.post("/v1/keys", json={"scopes": ["write"]}, headers=_bearer(admin))
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "scopes"


def test_the_operator_key_manages_every_tenant_and_nothing_else(app_settings):
    with TestClient(create_app(app_settings)) as client:
        op = _bearer(OPERATOR_KEY)
        assert client.get("/v1/operator/tenants", headers=op).json() == {"tenants": ["acme", "zeta"]}
        issued = client.post("/v1/operator/tenants/zeta/keys", json={"scopes": ["read", "events"]}, headers=op).json()
        assert [k["key_id"] for k in client.get("/v1/operator/tenants/zeta/keys", headers=op).json()["keys"]] == [
            issued["key_id"]]
        assert client.delete(f"/v1/operator/tenants/zeta/keys/{issued['key_id']}", headers=op).status_code == 200
        assert client.get("/v1/operator/tenants/ghost/keys", headers=op).status_code == 404
        # The operator key is not a tenant key, and a tenant key is not the operator's.
        assert client.get("/v1/users/u1/recommendations", headers=op).status_code == 403
        with cdp_session(app_settings) as store:
            admin = issue_key(store, "acme")
        assert client.get("/v1/operator/tenants", headers=_bearer(admin)).status_code == 403
        assert client.get("/v1/operator/tenants", headers=_bearer(OPERATOR_KEY + "x")).status_code == 401


def test_without_an_operator_key_configured_no_key_is_the_operator(tmp_path):
    settings = Settings(data_dir=tmp_path / "var")
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        assert principal_for_key(store, "", None) is None and principal_for_key(store, "anything", "") is None


def test_ready_names_no_tenant_without_a_key(app_settings):
    with cdp_session(app_settings) as store:
        key = issue_key(store, "acme", ("read",))
    with TestClient(create_app(app_settings)) as client:
        client.app.state.embedder_loaded.wait(10)
        public = client.get("/ready")
        assert public.status_code == 200 and public.json() == {"status": "ready"}
        assert "acme" not in public.text and "zeta" not in public.text
        with_key = client.get("/ready", headers=_bearer(key))
        assert with_key.status_code == 503  # acme has no published index yet: said to acme's key only
        assert "acme" in with_key.json()["detail"]


def test_keys_of_a_store_made_before_scopes_keep_every_scope(tmp_path):
    path = tmp_path / "cdp.sqlite"
    with sqlite3.connect(path) as conn:  # the tables as the first release made them
        conn.executescript("""
            CREATE TABLE tenants (name TEXT PRIMARY KEY, config TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
                                  updated_at REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
                                   key_hash TEXT NOT NULL, created_at REAL NOT NULL);
            INSERT INTO tenants VALUES ('acme', '{}', 1, 1, 0);
            INSERT INTO api_keys VALUES ('old', 'acme', 'h', 1);
        """)
    store = SqliteCdpStore(path)
    try:
        assert store.find_api_key("old")[:3] == ("acme", "h", ("read", "events", "admin"))
        assert store.revoke_api_key("acme", "old") and store.find_api_key("old") is None
    finally:
        store.close()


def test_cli_issues_lists_and_revokes_scoped_keys(tmp_path):
    env = {**os.environ, "LODESTAR_DATA_DIR": str(tmp_path / "var"), "LODESTAR_EMBED_MODEL": "hashing-64"}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "lodestar.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])
        assert not check or done.returncode == 0, done.stderr
        return done

    cli("tenants", "create", "acme")
    issued = json.loads(cli("tenants", "key", "acme", "--scope", "read", "--label", "app", "--json").stdout)
    assert issued["scopes"] == ["read"]
    listed = json.loads(cli("tenants", "keys", "acme", "--json").stdout)
    assert [(k["scopes"], k["label"]) for k in listed] == [(["read", "events", "admin"], ""), (["read"], "app")]
    key_id = issued["api_key"].split("_")[1]
    assert "Revoked" in cli("tenants", "revoke", "acme", key_id).stdout
    assert json.loads(cli("tenants", "keys", "acme", "--json").stdout)[1]["revoked_at"] is not None
    missing = cli("tenants", "revoke", "acme", "nope", check=False)
    assert missing.returncode == 2 and "no API key 'nope'" in missing.stderr
    bad = cli("tenants", "key", "acme", "--scope", "write", check=False)
    assert bad.returncode == 2 and "scopes must be some of read, events, admin" in bad.stderr
