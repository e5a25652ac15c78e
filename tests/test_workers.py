"""``lodestar serve --workers N``: N processes answer on one port, each with its own app, and stop
together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lodestar.cdp import cdp_session
from tests.helpers import (
    events_tenant,
    free_port,
    process_started_at,
    start_serve,
    wait_until,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> set[int]:
    """The worker processes of ``pid`` (multiprocessing's resource tracker is a child too: left out)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and b"resource_tracker" not in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def test_workers_share_one_port_and_stop_together(tmp_path):
    settings, key, env = events_tenant(tmp_path)
    port = free_port()
    server = start_serve(env, port, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        workers = wait_until(lambda: len(_children(server.pid)) >= 2 and _children(server.pid), timeout=30,
                             message="two worker processes were not started")
        assert len(workers) == 2
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            for n in range(20):  # fresh connections, so both workers take some
                answer = http.post("/v1/events", json={"events": [{"user_id": "u", "item_id": f"i{n}", "type": "view",
                                                                   "ts": time.time() - 60 + n}]},
                                   headers={"Connection": "close"})
                assert answer.status_code == 200 and answer.json()["stored"] == 1
        with cdp_session(settings) as store:
            assert len(store.user_events("acme", "u")) == 20
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert server.returncode is not None
    assert not any(process_started_at(pid) is not None for pid in workers), "a worker outlived the server"


def test_workers_must_be_positive(tmp_path):
    env = {**os.environ, "LODESTAR_DATA_DIR": str(tmp_path / "var")}
    done = subprocess.run([sys.executable, "-m", "lodestar.cli", "serve", "--workers", "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers must be 1 or more" in done.stderr


def test_a_served_process_keeps_blas_to_one_thread_and_a_test_app_does_not(tmp_path):
    """``lodestar serve`` keeps BLAS to one thread (serving.app.one_math_thread: OpenBLAS's threads
    spin between calls, a core's worth per request); an app a test or a tool creates leaves the
    process as it was. Each in a fresh interpreter whose OpenBLAS starts with two threads."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("OpenBLAS starts no second thread on one CPU: nothing to limit")
    _settings, _key, env = events_tenant(tmp_path)
    env = {**env, "OPENBLAS_NUM_THREADS": "2"}
    script = (
        "import json, sys\n"
        "from threadpoolctl import threadpool_info\n"
        "from litestar.testing import TestClient\n"
        "from serving.app import create_app\n"
        "from serving.server import served_app\n"
        "app = served_app() if sys.argv[1] == 'served' else create_app()\n"
        "with TestClient(app):\n"
        "    print(json.dumps([p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']))\n"
    )
    counts = {}
    for kind in ("served", "created"):
        done = subprocess.run([sys.executable, "-c", script, kind], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        counts[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["served"] and set(counts["served"]) == {1}
    assert counts["created"] and set(counts["created"]) == {2}
