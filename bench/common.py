"""What the benchmarks share: a real `lodestar serve` process on a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], headers: dict[str, str] | None = None,
                 timeout_s: float = 120, args: list[str] | None = None) -> tuple[subprocess.Popen, httpx.Client]:
    """Start `lodestar serve` with ``env`` (and extra ``args``, e.g. ``--workers 2``) and return it
    with a client, once /ready answers 200."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "serve", "--port", str(port), *(args or [])],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers or {})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/ready").status_code == 200:
                return process, client
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise SystemExit("lodestar serve did not become ready")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)
