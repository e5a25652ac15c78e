"""``kill -9`` of ``lodestar serve`` while clients are POSTing events: every event the server
acknowledged (a 200) is in the CDP store afterwards, and a restarted server serves on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lodestar.cdp import cdp_session
from lodestar.records import event_id, parse_event
from tests.helpers import events_tenant, free_port, process_started_at, start_serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_every_acknowledged_event_survives_kill_9_of_the_server(tmp_path):
    settings, key, env = events_tenant(tmp_path)
    port = free_port()
    server = start_serve(env, port)
    acknowledged: list[str] = []
    sent = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    start = time.time() - 3600

    def client(worker: int) -> None:
        # Bounded: at most 400 batches per client, and it stops when the server is gone.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=5) as http:
            for batch in range(400):
                if stop.is_set():
                    return
                events = [{"user_id": f"u{worker}", "item_id": f"i{n}", "type": "view",
                           "ts": start + worker * 1000 + batch * 0.01 + n * 0.0001} for n in range(20)]
                try:
                    response = http.post("/v1/events", json={"events": events})
                except httpx.HTTPError:
                    return  # the server was killed mid-request: that batch was never acknowledged
                if response.status_code == 200:
                    assert response.json()["accepted"] == 20
                    with lock:
                        acknowledged.extend(event_id(parse_event(e)) for e in events)
                    sent.set()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert sent.wait(30), "no batch was acknowledged"
        time.sleep(0.5)  # let the clients keep writing while the server dies
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        if server.poll() is None:
            server.kill()
    assert len(acknowledged) >= 20
    with cdp_session(settings) as store:
        stored = {e["id"] for w in range(4) for e in store.user_events("acme", f"u{w}", limit=1_000_000)}
    lost = set(acknowledged) - stored
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged events were lost"
    restarted = start_serve(env, port)  # the store opens cleanly after the crash and takes events again
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/events", headers={"Authorization": f"Bearer {key}"},
                              json={"events": [{"user_id": "after", "item_id": "i1", "type": "view"}]}, timeout=10)
        assert response.status_code == 200 and response.json()["stored"] == 1
    finally:
        restarted.terminate()
        restarted.wait(10)


_CONSOLE_HELPER = """
import sys, time
from pathlib import Path

from lodestar.settings import Settings
from serving.console import pipeline

pipeline.STATUS_MODULE = "os"  # the helper answers os.getpid(): no Dagster needed to start it
console_pipeline = pipeline.Pipeline(Settings(data_dir=Path(sys.argv[1])))
print(console_pipeline._ask("getpid"), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_the_console_s_pipeline_helper_ends_with_a_killed_server(tmp_path):
    """The helper process the console asks about runs (serving.console.pipeline) must not outlive
    a serving process killed without a chance to stop it: it would wait for questions for ever."""
    parent = subprocess.Popen([sys.executable, "-c", _CONSOLE_HELPER, str(tmp_path / "var")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        helper = int(parent.stdout.readline())
        started = process_started_at(helper)
        assert helper != parent.pid and started is not None
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while process_started_at(helper) == started and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_started_at(helper) == started:
        os.kill(helper, signal.SIGKILL)
        raise AssertionError("the helper outlived the killed server")
