"""A run whose process dies holding a pool slot (``kill -9`` in the middle of ``item_embeddings``)
must not block the runs after it: the next run finds it dead, marks it failed and frees its slots;
and a run waiting for a live holder backs off and says which run it waits for."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from lodestar.cdp import open_cdp
from lodestar.settings import Settings
from pipelines import recovery
from pipelines.recovery import RunProcess, held_slots, install_claim_backoff
from pipelines.run import REPO_ROOT, dagster_home, materialize_tenants
from tests.conftest import load_demo_tenant
from tests.helpers import wait_until

LODESTAR = [str(Path(sys.executable).with_name("lodestar"))]
POOL = "embedding"

# The run to be killed: `lodestar materialize` as the CLI runs it, except that encoding texts (inside
# item_embeddings, while the run holds the embedding pool's slot) never ends. The stand-in encoder
# lives in this child process only; nothing in Lodestar has a test hook for it.
HOLDS_THE_SLOT = textwrap.dedent("""
    import sys, time
    from lodestar.embed import Embedder

    def encode_for_ever(self, texts, progress=None):
        time.sleep(3600)

    Embedder.embed = encode_for_ever
    from lodestar.settings import Settings
    from pipelines.run import materialize_tenants

    materialize_tenants(Settings.from_env(), [sys.argv[1]])
""")


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("LODESTAR_")}
    env.update(LODESTAR_DATA_DIR=str(data_dir), LODESTAR_EMBED_MODEL="hashing-64")
    return env


@pytest.fixture()
def two_tenants(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "var")
    store = open_cdp(settings)
    try:
        for tenant in ("t1", "t2"):
            load_demo_tenant(store, settings, tenant, "shop", n_items=20, n_users=5)
    finally:
        store.close()
    return settings


def _instance(settings: Settings) -> DagsterInstance:
    """The instance `lodestar materialize` uses for this data dir (created here, before any child
    process opens it, so that two processes never create its storage at once)."""
    return DagsterInstance.from_config(str(dagster_home(settings, environ={})))


def _failure_message(instance: DagsterInstance, run_id: str) -> str:
    failures = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return failures[-1].dagster_event.message if failures else ""


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_a_killed_run_is_failed_and_its_slot_freed_by_the_next_run(two_tenants):
    settings = two_tenants
    env = _env(settings.data_dir)
    with _instance(settings) as instance:
        holder = subprocess.Popen([sys.executable, "-c", HOLDS_THE_SLOT, "t1"], env=env, cwd=REPO_ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            killed_run = wait_until(lambda: next(iter(held_slots(instance, POOL)), None), timeout=60,
                                    message="the first run never claimed the embedding slot")
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        assert instance.get_run_by_id(killed_run).status == DagsterRunStatus.STARTED  # what kill -9 leaves

        started = time.monotonic()
        try:
            second = subprocess.run(LODESTAR + ["materialize", "--tenant", "t2"], check=False, env=env, cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the next run still waited for the killed run {killed_run} after 60 s")
        assert second.returncode == 0, second.stdout + second.stderr
        print(f"the next run finished {time.monotonic() - started:.1f} s after the kill")
        # The CLI says what it recovered: the run, its tenant and its dead process.
        assert killed_run in second.stdout and f"pid {holder.pid}" in second.stdout, second.stdout
        assert "Tenant 't2' materialized in" in second.stdout

        run = instance.get_run_by_id(killed_run)
        assert run.status == DagsterRunStatus.FAILURE
        reason = _failure_message(instance, killed_run)
        assert f"pid {holder.pid}" in reason and "is gone" in reason, reason
        assert held_slots(instance, POOL) == {}
        assert instance.event_log_storage.get_concurrency_run_ids() == set()  # no pending claim either


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_a_live_holder_is_waited_for_with_back_off_and_recovered_once_it_dies(two_tenants, monkeypatch):
    settings = two_tenants
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LODESTAR_EMBED_MODEL", "hashing-64")
    monkeypatch.setattr(recovery, "RECHECK_MAX_S", 2.0)  # the watcher's back-off ceiling, short for a test
    with _instance(settings) as instance:
        # A live holder: a run of tenant t1 in this very process, holding the embedding slot.
        holder = DagsterRun(job_name="materialize_tenant", status=DagsterRunStatus.STARTED,
                            tags={"lodestar/tenant": "t1", **RunProcess.current().tags()})
        instance.add_run(holder)
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(POOL)
        assert storage.claim_concurrency_slot(POOL, holder.run_id, "item_embeddings").is_claimed

        said: list[str] = []
        outcomes: list = []
        waiter = threading.Thread(target=lambda: outcomes.extend(materialize_tenants(settings, ["t2"], say=said.append)),
                                  daemon=True)
        waiter.start()
        try:
            message = wait_until(lambda: next((line for line in said if holder.run_id in line), None), timeout=30,
                                 message=f"the waiting run never said it waits for {holder.run_id}")
            assert "t1" in message and f"pid {os.getpid()}" in message and POOL in message, message
            # It backs off: a few seconds of waiting cost this process a small fraction of a core.
            cpu = time.process_time()
            time.sleep(1.0)
            assert time.process_time() - cpu < 0.25, "the waiting run spins instead of backing off"
            assert not outcomes and instance.get_run_by_id(holder.run_id).status == DagsterRunStatus.STARTED

            # The holder's process dies while the run waits (its tags now name a process that ended).
            ended = subprocess.Popen(["true"])
            ended.wait()
            instance.add_run_tags(holder.run_id, {"lodestar/pid": str(ended.pid)})
            waiter.join(timeout=45)
            assert outcomes and outcomes[0].success, said
        finally:
            storage.free_concurrency_slots_for_run(holder.run_id)  # whatever happened, let the waiter end
            waiter.join(timeout=60)
        assert instance.get_run_by_id(holder.run_id).status == DagsterRunStatus.FAILURE
        assert any(line.startswith(f"  Recovered run {holder.run_id}") for line in said), said


def test_the_claim_back_off_is_installed():
    """Dagster 1.13's in-process executor sleeps ``min(0, ...)`` between pool claim checks, that
    is never; the installed fix sleeps until the next check is due."""
    from dagster._core.execution.plan.instance_concurrency_context import (
        InstanceConcurrencyContext,
    )

    assert install_claim_backoff()
    waiting = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    waiting._pending_claims = {"item_embeddings"}
    waiting._pending_timeouts = {"item_embeddings": time.time() + 5}
    assert 4 < waiting.interval_to_next_pending_claim_check() <= 5


@pytest.mark.parametrize("config", ["dagster_home/dagster.yaml", "deploy/dagster.yaml"])
def test_the_daemon_frees_the_slots_of_a_run_marked_failed_by_hand(config, tmp_path, monkeypatch):
    """What Dagster's run monitoring covers, with the committed instance configs: the pool slots of
    a run that was marked failed (by hand, in the UI) are freed once it ended some seconds ago."""
    import types

    import yaml
    from dagster import instance_for_test
    from dagster._daemon.monitoring import concurrency

    settings = yaml.safe_load((REPO_ROOT / config).read_text())["run_monitoring"]
    assert settings["enabled"] and settings["free_slots_after_run_end_seconds"] > 0
    with instance_for_test(temp_dir=str(tmp_path), overrides={"run_monitoring": settings,
                                                              "concurrency": {"pools": {"default_limit": 1}}}) as instance:
        run = DagsterRun(job_name="materialize_tenant", status=DagsterRunStatus.STARTED)
        instance.add_run(run)
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        instance.event_log_storage.claim_concurrency_slot(POOL, run.run_id, "item_embeddings")
        instance.report_run_failed(run, "marked failed by hand")
        assert held_slots(instance, POOL) == {run.run_id: ["item_embeddings"]}  # marking it freed nothing

        later = concurrency.get_current_datetime() + timedelta(seconds=settings["free_slots_after_run_end_seconds"] + 1)
        monkeypatch.setattr(concurrency, "get_current_datetime", lambda: later)
        list(concurrency.execute_concurrency_slots_iteration(types.SimpleNamespace(instance=instance), logging.getLogger()))
        assert held_slots(instance, POOL) == {}


def test_by_hand_a_run_found_dead_elsewhere_is_failed_and_its_slot_freed(tmp_path, monkeypatch, capsys):
    """`python -m pipelines.recovery` names who holds a slot and leaves a run it cannot check alone;
    with the run's id it marks it failed and frees its slot (README, "Recovering from a killed run")."""
    settings = Settings(data_dir=tmp_path / "var")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(settings.data_dir))
    with _instance(settings) as instance:
        elsewhere = RunProcess("another-host", 4242, "")
        run = DagsterRun(job_name="materialize_tenant", status=DagsterRunStatus.STARTED,
                         tags={"lodestar/tenant": "t1", **elsewhere.tags()})
        instance.add_run(run)
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        instance.event_log_storage.claim_concurrency_slot(POOL, run.run_id, "item_embeddings")

        assert recovery.main([]) == 0
        out = capsys.readouterr().out
        assert f"held by run {run.run_id} (tenant 't1', STARTED, pid 4242 on host another-host" in out, out
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED  # not provably dead

        assert recovery.main([run.run_id]) == 0
        assert "marked it failed and freed its slots (pool 'embedding')" in capsys.readouterr().out
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert "found dead by hand" in _failure_message(instance, run.run_id)
        assert held_slots(instance, POOL) == {}
        assert recovery.main(["no-such-run"]) == 2
