"""Helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "the condition did not hold in time") -> T:
    """Call ``predicate`` until it returns something truthy and return that, failing the test with
    ``message`` after ``timeout`` seconds. Waiting on the condition itself, not a fixed sleep, keeps
    a test fast when the machine is fast and correct when it is slow. An exception raised by the
    predicate (a failed assertion, say) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(env: dict[str, str], port: int, *args: str):
    """``lodestar serve`` on ``port`` in a subprocess (extra ``args`` such as ``--workers 2``),
    returned once ``/health`` answers."""
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    server = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "serve", "--port", str(port), *args], env=env,
                              cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def up() -> bool:
        assert server.poll() is None, "the server exited"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, message="lodestar serve did not come up")
    return server


def process_started_at(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if it is gone or a zombie: a
    process is the same one only while this stays the same (its pid may be reused). Linux /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return None
    return None if fields[0] == "Z" else int(fields[19])


def events_tenant(tmp_path):
    """A data dir with tenant ``acme`` and an events-scoped key, for ``lodestar serve`` subprocesses
    (hashing embedder): ``(settings, key, env)``."""
    import os

    from lodestar.cdp import cdp_session
    from lodestar.keys import issue_key
    from lodestar.settings import Settings

    settings = Settings(data_dir=tmp_path / "var", embed_model="hashing-64")
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        key = issue_key(store, "acme", ("events",))
    env = {**os.environ, "LODESTAR_DATA_DIR": str(settings.data_dir), "LODESTAR_EMBED_MODEL": "hashing-64"}
    return settings, key, env


OPERATOR_KEY = "op-" + "x" * 40  # the operator key of app_settings_with()


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of an API key."""
    return {"Authorization": f"Bearer {key}"}


def app_settings_with(tmp_path, *tenants: str):
    """Settings of a fresh data dir (the tiny hashing embedder, :data:`OPERATOR_KEY` as the
    operator key) whose CDP holds ``tenants``."""
    from lodestar.cdp import cdp_session
    from lodestar.settings import Settings

    settings = Settings(data_dir=tmp_path / "var", embed_model="hashing-64", admin_key=OPERATOR_KEY)
    with cdp_session(settings) as store:
        for tenant in tenants:
            store.create_tenant(tenant)
    return settings


def on_an_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (a worker thread has no running loop)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
