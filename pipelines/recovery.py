"""Recovering from a run whose process died (``kill -9``, the OOM killer, a reboot) while Dagster
still counts it as running and as holding its pool slots.

Nothing tells Dagster that the process of an in-process run died: the run stays STARTED and the
pool slot of the step it was in stays claimed, so every later run waits at that pool for ever.
Dagster's run monitoring (``run_monitoring`` in ``dagster_home/dagster.yaml``, a loop of the daemon)
does not cover this with the DefaultRunLauncher, which has no run worker health check, nor for runs
that ``lodestar materialize`` executes in its own process; what it does is free the slots of runs
that *finished* (``free_slots_after_run_end_seconds``), fail runs stuck starting, and enforce
``dagster/max_runtime``.

So each run that ``pipelines.run`` executes carries the identity of its process
(:class:`RunProcess`: host, pid, and the process's start time with the machine's boot id, so that
a pid the kernel gave to another process since is not taken for the run's). Before a run starts,
and while it waits for a pool slot, the runs of this host whose process is provably gone are marked
failed and their slots freed (:func:`recover_dead_runs`). Nothing is concluded about a run of
another host or container, nor about one without a recorded process (runs launched by the daemon
or the UI): a waiting run names them and keeps waiting (:func:`watching_slot_waits`), and the README
("Recovering from a killed run") says how to recover them by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

log = logging.getLogger(__name__)

HOST_TAG = "lodestar/host"
PID_TAG = "lodestar/pid"
# "<boot id>/<pid namespace>/<start time in clock ticks since boot>": which process, exactly (Linux).
PROCESS_TAG = "lodestar/process"
TENANT_TAG = "lodestar/tenant"

# The statuses of a run that has a process, or is about to (SUSPENDED and QUEUED runs have none).
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
              DagsterRunStatus.CANCELING]
RECHECK_FIRST_S = 1.0  # a waiting run looks at who holds its pool after this long, then backs off
RECHECK_MAX_S = 15.0  # ... to this (Dagster's own claim back-off ends at 15 s too)
REMIND_S = 60.0  # an unchanged wait is said again this often


class Liveness(Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"  # another host or container, or a platform where it cannot be told


_PROC = Path("/proc")


@cache
def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@cache
def _pid_namespace() -> str:
    try:
        return os.readlink(_PROC / "self/ns/pid")  # "pid:[4026531836]": one per container
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; ``None`` when there is
    no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name in (...) may hold spaces
    return fields[0], fields[19]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclass(frozen=True)
class RunProcess:
    """The process that executes a run, as recorded in the run's tags."""

    host: str
    pid: int
    identity: str = ""  # PROCESS_TAG's value; empty where /proc is not there (macOS)

    @classmethod
    def current(cls) -> RunProcess:
        pid = os.getpid()
        stat = _proc_stat(pid) if _boot_id() else None
        identity = f"{_boot_id()}/{_pid_namespace()}/{stat[1]}" if stat else ""
        return cls(socket.gethostname(), pid, identity)

    @classmethod
    def of_run(cls, run: DagsterRun) -> RunProcess | None:
        """The process recorded in the run's tags; ``None`` for a run launched without them (by the
        daemon, the UI, or an older Lodestar)."""
        try:
            pid = int(run.tags[PID_TAG])
            host = run.tags[HOST_TAG]
        except (KeyError, ValueError):
            return None
        identity = run.tags.get(PROCESS_TAG, "")
        if pid <= 0:  # os.kill(0 or -1, ...) would ask about whole process groups
            return None
        return cls(host, pid, identity if identity.count("/") == 2 else "")

    def tags(self) -> dict[str, str]:
        tags = {HOST_TAG: self.host, PID_TAG: str(self.pid)}
        if self.identity:
            tags[PROCESS_TAG] = self.identity
        return tags

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}"

    def liveness(self) -> Liveness:
        """GONE only when it is certain: same host (hosts are told apart by hostname) and pid
        namespace, and the pid is free, or a zombie, or another process's (another start time), or
        the host restarted since (another boot id)."""
        if self.host != socket.gethostname() or os.name != "posix":  # os.kill(pid, 0) kills on Windows
            return Liveness.UNKNOWN
        if not self.identity or not _boot_id():
            return Liveness.ALIVE if _exists(self.pid) else Liveness.GONE
        boot, namespace, started = self.identity.split("/", 2)
        if namespace != _pid_namespace():
            return Liveness.UNKNOWN
        if boot != _boot_id():
            return Liveness.GONE
        stat = _proc_stat(self.pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] != started:
            return Liveness.GONE
        return Liveness.ALIVE


def _tenant(run: DagsterRun) -> str:
    return run.tags.get(TENANT_TAG) or run.tags.get("dagster/partition") or "?"


def _pools_of(instance: DagsterInstance, run_id: str) -> list[str]:
    """The pools in which the run holds a slot or waits for one."""
    storage = instance.event_log_storage
    infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
    return sorted(pool for pool, info in infos.items()
                  if any(s.run_id == run_id for s in info.claimed_slots)
                  or any(p.run_id == run_id for p in info.pending_steps))


def held_slots(instance: DagsterInstance, pool: str) -> dict[str, list[str]]:
    """Run id -> its steps that hold a slot of ``pool``."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or pool not in storage.get_concurrency_keys():
        return {}
    held: dict[str, list[str]] = {}
    for slot in storage.get_concurrency_info(pool).claimed_slots:
        held.setdefault(slot.run_id, []).append(slot.step_key)
    return held


def _end_run(instance: DagsterInstance, run: DagsterRun, why: str) -> str | None:
    """Mark the run failed (canceled if it was being canceled) unless it finished, and free its pool
    slots; what was done, or ``None`` when there was nothing to do."""
    from dagster._core.events import JobFailureData, RunFailureReason

    run = instance.get_run_by_id(run.run_id) or run  # another process may have just done it
    storage = instance.event_log_storage
    held = _pools_of(instance, run.run_id) if storage.supports_global_concurrency_limits else []
    done = []
    if not run.is_finished:
        canceling = run.status == DagsterRunStatus.CANCELING
        reason = (f"{why} Marked {'canceled' if canceling else 'failed'} by Lodestar (pid {os.getpid()} on "
                  f"host {socket.gethostname()}), which freed its pool slots.")
        if canceling:
            instance.report_run_canceled(run, reason)
        else:
            instance.report_run_failed(run, reason, JobFailureData(
                error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
        done.append(f"marked it {'canceled' if canceling else 'failed'}")
    if held:
        storage.free_concurrency_slots_for_run(run.run_id)
        done.append(f"freed its slots (pool {', '.join(repr(p) for p in held)})")
    return " and ".join(done) or None


def recover_dead_runs(
    instance: DagsterInstance, say: Callable[[str], None] = print, among: Collection[str] | None = None,
) -> list[str]:
    """Mark failed each unfinished run (of ``among``, or all) whose process is provably gone, and free
    the pool slots of those and of finished runs whose process is gone; tell ``say`` about each.
    Returns their run ids. Runs of other hosts and runs without a recorded process are left alone."""
    storage = instance.event_log_storage
    if among is not None:
        runs = instance.get_runs(RunsFilter(run_ids=list(among))) if among else []
    else:
        runs = list(instance.get_runs(RunsFilter(statuses=UNFINISHED)))
        # A finished run can still hold a slot (marked failed by hand while its process was stuck).
        in_pools = (storage.get_concurrency_run_ids() - {run.run_id for run in runs}
                    if storage.supports_global_concurrency_limits else set())
        if in_pools:
            runs += instance.get_runs(RunsFilter(run_ids=sorted(in_pools)))
    recovered = []
    for run in runs:
        process = RunProcess.of_run(run)
        if process is None or process.liveness() is not Liveness.GONE:
            continue
        why = (f"The process of this run ({process.describe()}) is gone: it was killed, or its machine "
               f"restarted, while the run was {run.status.value}.")
        done = _end_run(instance, run, why)
        if done:
            say(f"  Recovered run {run.run_id} (tenant {_tenant(run)!r}, {process.describe()}): it was "
                f"{run.status.value} but its process is gone; {done}.")
            recovered.append(run.run_id)
    return recovered


def end_runs(instance: DagsterInstance, run_ids: Collection[str], say: Callable[[str], None] = print) -> bool:
    """Mark the runs failed and free their pool slots, whatever their process: for runs a person
    found dead where this module cannot look (another host, a run launched by the daemon). False
    when one of them does not exist."""
    found = True
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is None:
            say(f"No run {run_id} in this instance ({instance.root_directory}).")
            found = False
            continue
        done = _end_run(instance, run, "Its process was found dead by hand.")
        say(f"Run {run_id} (tenant {_tenant(run)!r}): {done or 'already ended, and holds no pool slot'}.")
    return found


def slot_blockers(instance: DagsterInstance, run_id: str) -> dict[str, list[str]]:
    """Pool -> the runs holding its slots, for each pool in which a step of the run waits for a slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    blockers = {}
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        if any(p.run_id == run_id and p.assigned_timestamp is None for p in info.pending_steps):
            holders = {s.run_id for s in info.claimed_slots if s.run_id}
            holders |= {p.run_id for p in info.pending_steps if p.assigned_timestamp is not None}
            holders.discard(run_id)
            blockers[pool] = sorted(holders)
    return blockers


def _holder(instance: DagsterInstance, run_id: str) -> tuple[str, bool]:
    """How a run holding a slot is named to the user, and whether its process could be checked."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} (no such run any more)", False
    process = RunProcess.of_run(run)
    if process is None:
        where, checked = "its process is not recorded (launched by the daemon or the UI): not checked", False
    elif (liveness := process.liveness()) is Liveness.UNKNOWN:
        where, checked = f"{process.describe()}, another host or container: not checked", False
    else:
        where, checked = f"{process.describe()}, {liveness.value}", True
    return f"run {run_id} (tenant {_tenant(run)!r}, {run.status.value}, {where})", checked


def waiting_message(instance: DagsterInstance, blockers: dict[str, list[str]]) -> str:
    """Which runs hold the slots of the pools a run waits for, with their tenant and process."""
    parts, unchecked = [], False
    for pool, holders in blockers.items():
        limit = instance.event_log_storage.get_concurrency_info(pool).limit
        named = [_holder(instance, h) for h in holders]
        unchecked |= not all(checked for _, checked in named)
        held_by = "; ".join(name for name, _ in named) or "runs queued ahead of this one"
        parts.append(f"pool {pool!r} (limit {limit}) held by {held_by}")
    hint = (" If a run named here is dead, see 'Recovering from a killed run' in the README."
            if unchecked else "")
    return f"  Waiting for a slot in {' and '.join(parts)}; checking again with back-off.{hint}"


def _watch(instance: DagsterInstance, run_id: str, say: Callable[[str], None], stop: threading.Event) -> None:
    interval, said, said_at = RECHECK_FIRST_S, "", 0.0
    while not stop.wait(interval):
        try:
            blockers = slot_blockers(instance, run_id)
            if not blockers:
                interval, said = RECHECK_FIRST_S, ""
                continue
            holders = {h for hs in blockers.values() for h in hs}
            if recover_dead_runs(instance, say, among=holders):
                interval = RECHECK_FIRST_S  # the freed slot goes to the next pending step, maybe ours
                continue
            message = waiting_message(instance, blockers)
            if message != said or time.monotonic() - said_at >= REMIND_S:
                say(message)
                said, said_at = message, time.monotonic()
        except Exception:  # the run goes on without the watcher rather than fail for it
            log.warning("could not check which run holds the pool slot run %s waits for", run_id, exc_info=True)
        interval = min(interval * 2, RECHECK_MAX_S)


@contextmanager
def watching_slot_waits(instance: DagsterInstance, run_id: str, say: Callable[[str], None] = print) -> Iterator[None]:
    """While the block runs (the run ``run_id`` executing in this process), a background thread
    looks, with back-off, whether the run waits for a pool slot: it recovers holders whose process
    is gone (:func:`recover_dead_runs`) and tells ``say`` which live run it waits for."""
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(instance, run_id, say, stop), daemon=True,
                               name=f"slot-wait-{run_id[:8]}")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=RECHECK_MAX_S)


def release_slots(instance: DagsterInstance, run_id: str) -> None:
    """Free what pool slots a run executed in this process still holds once it returned: none of
    its steps runs any more (Dagster's in-process executor leaves claimed slots held when a step is
    interrupted, say by Ctrl-C)."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)


def install_claim_backoff() -> bool:
    """Make a run that waits for a pool slot sleep between its claim checks instead of spinning.

    Dagster 1.13's executors sleep ``InstanceConcurrencyContext.interval_to_next_pending_claim_check()``
    seconds when every remaining step waits for a slot; it returns ``min([0, *until_next_check])``,
    never more than 0, so the loop spins a core for as long as the wait lasts (the DB is only asked
    every 1 to 15 s; upstream's fix, dagster-io/dagster#20367, was closed unmerged). The replacement
    returns the time until the next check is due. Installed only while the method has that flaw,
    so a Dagster that fixed it keeps its own; returns whether the process now backs off."""
    from dagster._core.execution.plan.instance_concurrency_context import (
        InstanceConcurrencyContext,
    )

    current = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    if getattr(current, "lodestar_backoff", False):
        return True
    probe = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    try:
        probe._pending_claims = {"probe"}
        probe._pending_timeouts = {"probe": time.time() + 60}
        if current(probe) > 0:
            return True  # Dagster backs off by itself
    except Exception:  # its internals changed: leave it be
        log.warning("Dagster's pool claim loop changed; not installing Lodestar's back-off", exc_info=True)
        return False

    def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
        if not self._pending_claims:
            return 0.0
        due = [self._pending_timeouts[step] for step in self._pending_claims if step in self._pending_timeouts]
        return max(0.0, min(due) - time.time()) if due else 0.0

    interval_to_next_pending_claim_check.lodestar_backoff = True  # type: ignore[attr-defined]
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.recovery [RUN_ID ...]``: see the README, "Recovering from a killed run"."""
    import argparse

    from lodestar.settings import Settings
    from pipelines.run import dagster_home

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.recovery",
        description="Without RUN_ID: recover the runs of this host whose process is gone (as the next "
                    "`lodestar materialize` would) and name the runs that still hold pool slots. With "
                    "RUN_IDs: mark those runs failed and free their slots; only for runs whose process "
                    "you know is gone. The instance is the one `lodestar materialize` uses.",
    )
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    args = parser.parse_args(argv)
    with DagsterInstance.from_config(str(dagster_home(Settings.from_env()))) as instance:
        if args.run_ids:
            return 0 if end_runs(instance, args.run_ids) else 2
        if not recover_dead_runs(instance):
            print("No run of this host with a dead process.")
        storage = instance.event_log_storage
        pools = sorted(storage.get_concurrency_keys()) if storage.supports_global_concurrency_limits else []
        for pool in pools:
            for run_id in held_slots(instance, pool):
                print(f"Pool {pool!r}: a slot is held by {_holder(instance, run_id)[0]}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
