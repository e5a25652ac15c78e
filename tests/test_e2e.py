"""End to end through the CLI, as a newcomer would: real processes, real HTTP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lodestar import demo
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]
CLI = [sys.executable, "-m", "lodestar.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env, check=True):
    result = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture()
def cli_env(tmp_path):
    env = dict(os.environ)
    env.update(LODESTAR_DATA_DIR=str(tmp_path / "var"), DAGSTER_HOME=str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


def test_create_import_materialize_serve(tmp_path, cli_env):
    files = {t: demo.write_demo(tmp_path / "input", t, **sizes)
             for t, sizes in (("shop", {"n_items": 60, "n_users": 12}), ("news", {"n_items": 40, "n_users": 8}))}
    keys = {}
    for tenant in files:
        keys[tenant] = json.loads(_run(["tenants", "create", tenant, "--json"], cli_env).stdout)["api_key"]
        out = _run(["cdp", "import", "--tenant", tenant, "--items", str(files[tenant]["items"]),
                    "--users", str(files[tenant]["users"]), "--events", str(files[tenant]["events"])], cli_env).stdout
        assert "0 rejected" in out
    out = _run(["materialize", "--all"], cli_env).stdout
    assert "published_index: serving version" in out and out.count("materialized in") == 2

    again = _run(["tenants", "create", "shop"], cli_env, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = _run(["materialize", "--tenant", "ghost"], cli_env, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    port = _free_port()
    server = subprocess.Popen(CLI + ["serve", "--port", str(port)], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=30)

        def ready() -> bool:
            assert server.poll() is None, "server did not become ready"  # it exited: no use waiting
            try:
                return http.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=90, interval=0.3, message="server did not become ready")
        shop = {"Authorization": f"Bearer {keys['shop']}"}
        news = {"Authorization": f"Bearer {keys['news']}"}
        recs = http.get("/v1/users/u0001/recommendations?k=5", headers=shop).json()
        assert len(recs["items"]) == 5 and all(i["id"].startswith("p") for i in recs["items"])
        assert http.get("/v1/users/u0001/recommendations", headers=news).json()["strategy"] == "popular"
        assert http.get("/v1/items/p00001/similar", headers=news).status_code == 404
        found = http.post("/v1/search", json={"query": "coffee grinder", "k": 3}, headers=shop).json()
        assert found["items"] and found["index_version"] == recs["index_version"]
        assert http.get("/v1/users/u0001/recommendations").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert Path(cli_env["LODESTAR_DATA_DIR"], "cdp.sqlite").is_file()
