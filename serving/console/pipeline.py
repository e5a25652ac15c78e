"""The console's view of the pipeline, kept out of the serving process.

Reading runs takes Dagster, which the serving process never imports (its memory is per tenant
served; tests/test_architecture.py holds it to that). So the console asks a helper process, started
on the first pipeline question and kept for the next ones, to run :mod:`pipelines.status` (named
by string: the helper imports it, this process never does). A tenant is materialized as the CLI
does it: ``lodestar materialize --tenant T`` in a process of its own, whose run Dagster records like
any other; the console then follows that run's steps in the instance."""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from lodestar.errors import Conflict
from lodestar.settings import Settings

log = logging.getLogger("lodestar.serving")
STATUS_MODULE = "pipelines.status"
TIMEOUT_S = 20.0  # the helper's first answer includes importing Dagster (a few seconds)


def _call(module: str, function: str, *args: Any) -> Any:
    """Runs in the helper process."""
    return getattr(importlib.import_module(module), function)(*args)


def _init(environ: dict[str, str]) -> None:
    """Runs in the helper process as it starts."""
    os.environ.update(environ)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="exit-with-the-server", daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    """Ends the helper when the serving process is gone, however it ended. A server that stops
    normally tells its helper to stop (:meth:`Pipeline.close`); one that is killed (SIGKILL, the
    kernel's OOM killer, a container stopped past its grace period) cannot, and the helper, which
    holds its own end of the pipe it reads its questions from, would wait for the next one for
    ever, with its Dagster imports (about 200 MB) resident."""
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._started: dict[str, tuple[subprocess.Popen, float, Path]] = {}

    def _environ(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if k.startswith(("LODESTAR_", "DAGSTER_", "XDG_", "HOME", "PATH"))}
        environ["LODESTAR_DATA_DIR"] = str(self.settings.data_dir)
        return environ

    def _ask(self, function: str, *args: Any) -> Any:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init, initargs=(self._environ(),))
            pool = self._pool
        try:
            return pool.submit(_call, STATUS_MODULE, function, *args).result(timeout=TIMEOUT_S)
        except BrokenProcessPool:
            with self._lock:
                self._pool = None  # the helper died (killed, out of memory): the next question starts another
            raise

    def runs(self, tenant: str, limit: int = 5) -> list[dict[str, Any]]:
        """The tenant's newest runs (the first with its steps and checks), and a run being started
        here that Dagster does not list yet."""
        runs = self._ask("tenant_runs", tenant, limit)
        started = self._started.get(tenant)
        if started is not None:
            process, at, output = started
            if process.poll() is None and not any(r["created"] >= at - 1 for r in runs):
                runs.insert(0, {"run_id": "", "status": "STARTING", "in_flight": True, "start": at, "end": None,
                                "steps": [], "checks": [], "job": "materialize_tenant", "tenant": tenant})
            elif process.poll() is not None and process.returncode != 0 and not any(r["created"] >= at - 1 for r in runs):
                tail = output.read_text(errors="replace")[-2000:] if output.is_file() else ""
                runs.insert(0, {"run_id": "", "status": "FAILURE", "in_flight": False, "start": at, "end": None,
                                "steps": [], "checks": [], "job": "materialize_tenant", "tenant": tenant,
                                "output": tail})
        return runs

    def latest(self) -> dict[str, dict[str, Any]]:
        return self._ask("latest_runs")

    def materialize(self, tenant: str) -> None:
        """Start ``lodestar materialize --tenant`` unless a run of the tenant is under way."""
        runs = self.runs(tenant, 1)
        if runs and runs[0]["in_flight"]:
            raise Conflict(f"tenant {tenant!r} already has a run under way ({runs[0]['status'].lower()}); "
                           "watch it here, then start another")
        folder = self.settings.data_dir / "console" / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / f"{tenant}.log"
        with output.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "materialize", "--tenant", tenant],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **self._environ()}, start_new_session=True)
        self._started[tenant] = (process, time.time(), output)
        log.info("console: materializing tenant %s (pid %d)", tenant, process.pid)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        # A materialization started here goes on (it has a session of its own): Dagster records its end.
