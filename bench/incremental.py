"""Incremental materialization at scale, against the full materialization in the same run.

    .venv/bin/python bench/incremental.py [--items 100000] [--users 10000] [--events 1000000]
                                          [--change 0.01] [--trials 3] [--no-daemon] [--keep DIR]

On a generated shop tenant (every item text distinct; see bench/large.py) it prints:
  * the full materialization (every asset through Dagster, cold embedding cache), each stage's
    share, and beside it the same full materialization of the same tenant in a data dir of its own
    with ``--baseline-backend`` (default torch, the embedding backend before onnx-int8 was the
    default): their ratio (goal: <= 0.5 of the 857 s that issue 12 measured; both printed);
  * the materialization after changing ``--change`` of the items (new titles) in the CDP, and its
    ratio to the full one (goal: <= 0.10);
  * with a real Dagster daemon (`dagster-daemon run`, the settings' sensor interval: 5 s unless
    ``--sensor-interval``) and `lodestar serve` running: the time from a new item written to the CDP
    store to the API knowing it (GET /v1/items/{id}/similar answers 200), per trial, with its
    median and p95 (goal: p95 <= 20 s over at least 10 trials); before the trials, the CPU the
    daemon and its code servers spend per minute while nothing changes, at that interval and at
    ``--idle-baseline`` (30 s, the old default) side by side: what a short sensor interval costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import start_server, stop  # noqa: E402
from bench.large import item_row, write_tenant  # noqa: E402
from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.keys import issue_key  # noqa: E402
from lodestar.records import parse_item  # noqa: E402
from lodestar.settings import Settings  # noqa: E402

TENANT = "large"
ISSUE_FULL_S = 857.0  # issue 12: the full materialization of this tenant when the issue was filed


def materialize(settings: Settings) -> tuple[float, dict[str, dict]]:
    """Every asset of the tenant through Dagster; seconds and each asset's materialization metadata.
    Prints each step's seconds and share of the run, slowest first."""
    from dagster import DagsterInstance

    from pipelines.run import materialize_in_process

    instance = DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = materialize_in_process(str(settings.data_dir), TENANT, instance=instance, log_level="WARNING")
    elapsed = time.perf_counter() - started
    if not result.success:
        raise SystemExit("materialization failed")
    steps = sorted(((s.end_time or 0) - (s.start_time or 0), s.step_key)
                   for s in instance.get_run_step_stats(result.run_id))[::-1]
    print("  stages: " + ", ".join(f"{key} {d:.1f} s ({d / elapsed:.0%})" for d, key in steps), flush=True)
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return elapsed, metadata


def quiet(instance, idle_s: float = 25, timeout_s: float = 1200) -> None:
    """Wait until no run of the instance has been queued or running for ``idle_s`` (longer than an
    automation tick, which may still request the downstream run of a finished extract run)."""
    from dagster import DagsterRunStatus, RunsFilter

    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    deadline = time.monotonic() + timeout_s
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_s:
        if instance.get_runs(filters=RunsFilter(statuses=busy), limit=1):
            idle_since = time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit("Dagster runs did not finish")
        time.sleep(1.0)


def runs_since(instance, since: float) -> str:
    """Each run the daemon started since ``since``: queued-to-start delay, duration and its slowest steps."""
    out = []
    for run in reversed(instance.get_runs(limit=10)):
        stats = instance.get_run_stats(run.run_id)
        if not stats.launch_time or stats.launch_time < since or not stats.end_time:
            continue
        steps = sorted(((s.end_time or 0) - (s.start_time or 0), s.step_key)
                       for s in instance.get_run_step_stats(run.run_id))[::-1][:3]
        out.append(f"{run.job_name} +{stats.launch_time - since:.0f}s start {stats.start_time - stats.launch_time:.1f}s "
                   f"run {stats.end_time - stats.start_time:.1f}s ({', '.join(f'{k} {d:.1f}s' for d, k in steps)})")
    return "; ".join(out)


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and every descendant alive now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        times[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


@contextmanager
def running_daemon(settings: Settings, work: Path, interval: int):
    """`dagster-daemon run` on the tenant's data dir with the given sensor interval, once its first
    ticks have synced the tenant and every run is over: yields (daemon process, instance, env)."""
    from dagster import DagsterInstance, RunsFilter

    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "LODESTAR_DATA_DIR": str(settings.data_dir),
           "LODESTAR_SENSOR_INTERVAL": str(interval)}
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                               str(REPO / "workspace.yaml")], env=env, cwd=REPO,
                              stdout=(work / "daemon.log").open("w"), stderr=subprocess.STDOUT)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            # The first ticks discover the tenant and sync it once (nothing changed: a quick pass).
            deadline = time.monotonic() + 600
            while not instance.get_runs(filters=RunsFilter(tags={"dagster/partition": TENANT}), limit=1):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"the daemon requested no run; see {work / 'daemon.log'}")
                time.sleep(1.0)
            quiet(instance)
            yield daemon, instance, env
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


def idle_cpu(daemon: subprocess.Popen, seconds: float = 60) -> float:
    """CPU seconds per minute that the daemon and its code servers spend while nothing changes."""
    before, started = cpu_seconds(daemon.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(daemon.pid) - before) / (time.monotonic() - started) * 60


def daemon_latency(settings: Settings, key: str, trials: int, work: Path, next_item: int,
                   interval: int, idle_baseline: int) -> list[float]:
    """Seconds from a new item in the CDP to the API serving it, with the Dagster daemon deciding;
    first what the daemon costs while nothing changes, at ``idle_baseline`` and at ``interval``."""
    if idle_baseline:
        with running_daemon(settings, work, idle_baseline) as (daemon, _instance, _env):
            baseline = idle_cpu(daemon)
    server = None
    with running_daemon(settings, work, interval) as (daemon, instance, env):
        idle = idle_cpu(daemon)
        print(f"  daemon and code servers while nothing changes: {idle:.2f} CPU s per minute with sensor ticks "
              f"every {interval} s" + (f", {baseline:.2f} every {idle_baseline} s (ratio {idle / baseline:.2f})"
                                       if idle_baseline else ""), flush=True)
        try:
            server, client = start_server(env, headers={"Authorization": f"Bearer {key}"})
            latencies = []
            rng = np.random.default_rng(99)
            store = open_cdp(settings)
            try:
                for trial in range(trials):
                    time.sleep(float(rng.uniform(0, interval)))  # land anywhere in the sensor's interval
                    row = item_row(next_item + trial, rng)
                    started = time.monotonic()
                    store.upsert_items(TENANT, [parse_item(row)])
                    while client.get(f"/v1/items/{row['id']}/similar", params={"k": 1}).status_code != 200:
                        if time.monotonic() - started > 600:
                            raise SystemExit(f"item {row['id']} never became visible; see {work / 'daemon.log'}")
                        time.sleep(0.25)
                    latencies.append(time.monotonic() - started)
                    print(f"  trial {trial + 1}: new item {row['id']} served after {latencies[-1]:.1f} s", flush=True)
                    quiet(instance)
                    print(f"    runs: {runs_since(instance, time.time() - (time.monotonic() - started) - 1)}",
                          flush=True)
            finally:
                store.close()
            return latencies
        finally:
            if server is not None:
                stop(server)


def visibility(latencies: list[float]) -> str:
    return (f"CDP change visible in the API: median {statistics.median(latencies):.1f} s, "
            f"p95 {np.percentile(latencies, 95):.1f} s, max {max(latencies):.1f} s over {len(latencies)} trials "
            f"(goal: p95 <= 20 s); trials: {json.dumps([round(x, 1) for x in latencies])}")


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--change", type=float, default=0.01, help="share of items changed for the incremental run")
    parser.add_argument("--trials", type=int, default=10, help="CDP-change-to-API trials with the daemon")
    parser.add_argument("--sensor-interval", type=int, default=Settings().sensor_interval_s,
                        help="seconds between CDP change sensor ticks (default: the settings' default)")
    parser.add_argument("--idle-baseline", type=int, default=30,
                        help="sensor interval whose idle daemon CPU is printed beside (0: skip; 30 was the default)")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon latency part")
    parser.add_argument("--baseline-backend", default="torch", choices=["torch", "onnx", "onnx-int8", "none"],
                        help="embedding backend of the side-by-side full materialization ('none': skip it)")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    parser.add_argument("--daemon-only", action="store_true",
                        help="with --keep DIR of an earlier run: only the daemon part, on the tenant already there")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="lodestar-incremental-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.daemon_only:
        if args.keep is None:
            raise SystemExit("--daemon-only needs --keep DIR of an earlier run")
        settings = Settings(data_dir=work / "var")
        store = open_cdp(settings)
        key = issue_key(store, TENANT)
        next_item = args.items + 1000 + int(time.time()) % 100_000  # ids no earlier trial used
        store.close()
        shutil.rmtree(work / "dagster_home", ignore_errors=True)
        print(f"CDP change to API, daemon running (sensor interval {args.sensor_interval} s):", flush=True)
        latencies = daemon_latency(settings, key, args.trials, work, next_item, args.sensor_interval, args.idle_baseline)
        print(visibility(latencies))
        return
    try:
        settings = Settings(data_dir=work / "var")
        store = open_cdp(settings)
        store.create_tenant(TENANT)
        key = issue_key(store, TENANT)
        started = time.perf_counter()
        paths = write_tenant(work / "input", args.items, args.users, args.events)
        generated = time.perf_counter() - started
        summary = import_files(store, settings, TENANT, paths)
        print(f"tenant {TENANT!r}: {args.items} items, {args.users} users, {args.events} events "
              f"(generated {generated:.0f} s, imported {time.perf_counter() - started - generated:.0f} s, "
              f"{summary.rejected} rejected)", flush=True)

        full, _ = materialize(settings)
        backend = Settings.from_env().embed_backend
        print(f"full materialization ({backend}):        {full:7.1f} s   "
              f"/ issue 12's 857 s = {full / ISSUE_FULL_S:.2f} (goal <= 0.5)", flush=True)
        if args.baseline_backend != "none":
            baseline = Settings(data_dir=work / "baseline" / "var", embed_backend=args.baseline_backend)
            baseline_store = open_cdp(baseline)
            baseline_store.create_tenant(TENANT)
            import_files(baseline_store, baseline, TENANT, paths)
            baseline_store.close()
            previous = os.environ.get("LODESTAR_EMBED_BACKEND")
            os.environ["LODESTAR_EMBED_BACKEND"] = args.baseline_backend  # what the run's resource reads
            try:
                base_s, _ = materialize(baseline)
            finally:
                if previous is None:
                    os.environ.pop("LODESTAR_EMBED_BACKEND")
                else:
                    os.environ["LODESTAR_EMBED_BACKEND"] = previous
            print(f"full materialization ({args.baseline_backend}, same tenant, same run): {base_s:7.1f} s   "
                  f"{backend} / {args.baseline_backend} = {full / base_s:.2f}", flush=True)
            if args.keep is None:
                shutil.rmtree(work / "baseline", ignore_errors=True)

        rng = np.random.default_rng(1)
        changed = rng.choice(args.items, size=max(1, int(args.items * args.change)), replace=False)
        store.upsert_items(TENANT, [parse_item(item_row(int(i), rng, revision=1)) for i in changed])
        incremental, metadata = materialize(settings)
        index = metadata.get("tenant_index", {})
        print(f"after changing {len(changed)} items ({args.change:.0%}):   {incremental:7.1f} s   "
              f"incremental / full = {incremental / full:.3f} (goal <= 0.10)")
        print(f"  index: {index.get('mode')} ({index.get('why')}); embeddings: "
              f"{metadata.get('item_embeddings', {}).get('encoded')} encoded; model refitted: "
              f"{metadata.get('collab_model', {}).get('refit')}; evaluation reused: "
              f"{metadata.get('offline_evaluation', {}).get('reused')}", flush=True)
        store.close()

        if not args.no_daemon:
            print(f"CDP change to API, daemon running (sensor interval {args.sensor_interval} s):", flush=True)
            latencies = daemon_latency(settings, key, args.trials, work, args.items, args.sensor_interval,
                                       args.idle_baseline)
            print(visibility(latencies))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
