"""The ``lodestar`` command, run as a user runs it (the installed console script, a fresh data dir),
and the Dagster instance each data dir gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunsFilter

from lodestar import demo
from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from pipelines.run import INSTANCE_CONFIG, dagster_home

LODESTAR = [str(Path(sys.executable).with_name("lodestar"))]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("LODESTAR_")}
    # The tiny deterministic embedder: materializing costs seconds, not a model load.
    env.update(LODESTAR_DATA_DIR=str(data_dir), LODESTAR_EMBED_MODEL="hashing-64")
    return env


def _run(args: list[str], env: dict[str, str], expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(LODESTAR + args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, f"{args}: rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_tenant_commands(tmp_path):
    env = _env(tmp_path / "var")
    created = json.loads(_run(["tenants", "create", "acme", "--json"], env).stdout)
    assert created["tenant"] == "acme" and created["api_key"].startswith("lsk_")
    assert "API key (shown once, store it now): lsk_" in _run(["tenants", "create", "beta"], env).stdout

    listed = json.loads(_run(["tenants", "list", "--json"], env).stdout)
    assert [(r["name"], r["items"], r["index_version"]) for r in listed] == [("acme", 0, None), ("beta", 0, None)]
    assert _run(["tenants", "list"], env).stdout.splitlines()[0].split() == ["tenant", "items", "users", "events",
                                                                               "index", "version"]

    key = json.loads(_run(["tenants", "key", "acme", "--json"], env).stdout)
    assert key["tenant"] == "acme" and key["api_key"] not in (created["api_key"], "")

    shown = json.loads(_run(["tenants", "config", "acme", "--set", '{"ranking": {"content": 0.2}}'], env).stdout)
    assert shown["stored"] == {"ranking": {"content": 0.2}}
    assert shown["effective"]["ranking"]["content"] == 0.2 and "view" in shown["effective"]["event_weights"]
    assert json.loads(_run(["tenants", "config", "acme"], env).stdout)["stored"] == shown["stored"]

    bad_json = _run(["tenants", "config", "acme", "--set", "{nope"], env, expect=2)
    assert bad_json.stderr.startswith("error: --set is not valid JSON")


def test_a_bad_tenant_name_says_what_is_allowed(tmp_path):
    result = _run(["tenants", "create", "Bad Name"], _env(tmp_path / "var"), expect=2)
    assert result.stderr.startswith("error: tenant name 'Bad Name' is not valid")
    assert "lowercase letters, digits" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["tenants", "key", "ghost"], ["tenants", "config", "ghost"],
                                  ["materialize", "--tenant", "ghost"]])
def test_an_unknown_tenant_is_one_clear_error(tmp_path, args):
    env = _env(tmp_path / "var")
    _run(["tenants", "create", "acme"], env)
    result = _run(args, env, expect=2)
    assert result.stderr.startswith(
        "error: tenant 'ghost' does not exist; create it with `lodestar tenants create ghost`")
    assert result.stderr.count("does not exist") == 1
    if args[0] == "materialize":
        assert "known tenants: acme" in result.stderr


def test_materialize_needs_a_tenant(tmp_path):
    env = _env(tmp_path / "var")
    assert "say which tenant" in _run(["materialize"], env, expect=2).stderr
    assert "no tenants to materialize" in _run(["materialize", "--all"], env, expect=2).stderr


def test_each_data_dir_has_its_own_dagster_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = dagster_home(Settings(data_dir=tmp_path / "a"))
    assert home == (tmp_path / "a" / "dagster").resolve()
    copy = home / "dagster.yaml"
    assert copy.read_text().endswith(INSTANCE_CONFIG.read_text())
    copy.write_text("telemetry:\n  enabled: true\n")  # stale: refreshed from the committed file
    dagster_home(Settings(data_dir=tmp_path / "a"))
    assert copy.read_text().endswith(INSTANCE_CONFIG.read_text())
    with DagsterInstance.from_config(str(home)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits[0]["key"] == "dagster/partition" and limits[0]["limit"] == 1

    explicit = tmp_path / "explicit"
    explicit.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(explicit))
    assert dagster_home(Settings(data_dir=tmp_path / "b")) == explicit
    assert not (tmp_path / "b" / "dagster").exists()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="is not a directory"):
        dagster_home(Settings(data_dir=tmp_path / "b"))


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_two_data_dirs_never_see_each_others_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    env = _env(a)
    _run(["tenants", "create", "acme"], env)
    files = demo.write_demo(tmp_path / "input", "shop", n_items=30, n_users=8)
    _run(["cdp", "import", "--tenant", "acme", *(f"--{entity}={path}" for entity, path in files.items())], env)
    out = _run(["materialize", "--tenant", "acme"], env).stdout
    assert "  [acme] published_index: serving version" in out and "Tenant 'acme' materialized in" in out

    with DagsterInstance.from_config(str(dagster_home(Settings(data_dir=a)))) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": "acme"}))
        assert len(runs) == 1 and runs[0].is_success
        assert instance.get_dynamic_partitions("tenants") == ["acme"]
    with DagsterInstance.from_config(str(dagster_home(Settings(data_dir=b)))) as instance:
        assert instance.get_runs() == []
        assert instance.get_dynamic_partitions("tenants") == []


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_materialize_all_splits_the_tenants_over_processes_one_run_each(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    env = _env(tmp_path / "var")
    tenants = ["t0", "t1", "t2"]
    for n, tenant in enumerate(tenants):
        _run(["tenants", "create", tenant], env)
        files = demo.write_demo(tmp_path / f"input{n}", "shop", n_items=20 + n, n_users=6, seed=n)
        _run(["cdp", "import", "--tenant", tenant, *(f"--{entity}={path}" for entity, path in files.items())], env)
    out = _run(["materialize", "--all", "--processes", "2"], env).stdout
    assert "Materializing 3 tenants in 2 processes" in out and "3 of 3 tenants materialized" in out
    with DagsterInstance.from_config(str(dagster_home(Settings(data_dir=tmp_path / "var")))) as instance:
        for tenant in tenants:
            runs = instance.get_runs(RunsFilter(tags={"dagster/partition": tenant}))
            assert len(runs) == 1 and runs[0].is_success  # one run per tenant, in whichever process
    listed = json.loads(_run(["tenants", "list", "--json"], env).stdout)
    assert all(row["index_version"] for row in listed)
    assert "--processes must be 1 or more" in _run(["materialize", "--all", "--processes", "0"], env, expect=2).stderr
