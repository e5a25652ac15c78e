"""Materialize a tenant's partition of every asset through Dagster, recorded in the instance
exactly like a run launched from the UI; and which instance that is (:func:`dagster_home`).

Each run carries its process's identity and first recovers the runs whose process died holding a
pool slot (:mod:`pipelines.recovery`), so a killed ``lodestar materialize`` never blocks the next."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance

from assets.partitions import TENANTS
from assets.resources import progress_log
from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from pipelines.definitions import all_assets, defs
from pipelines.jobs import MATERIALIZE_TENANT
from pipelines.recovery import (
    TENANT_TAG,
    RunProcess,
    install_claim_backoff,
    recover_dead_runs,
    release_slots,
    watching_slot_waits,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = REPO_ROOT / "workspace.yaml"  # the code location of `dagster dev -w workspace.yaml`
# The committed instance configuration (concurrency limits, pools, telemetry). Its folder is also a
# working DAGSTER_HOME of its own, for `dagster dev` run by hand.
INSTANCE_CONFIG = REPO_ROOT / "dagster_home" / "dagster.yaml"
_COPY_HEADER = f"# A copy of {INSTANCE_CONFIG}, refreshed by the lodestar CLI: edit that file, not this one.\n"


def dagster_home(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The Dagster instance directory for the settings' data dir: ``DAGSTER_HOME`` when it is set,
    else ``<data_dir>/dagster``.

    Dagster keeps run, event log and schedule storage (and compute logs) in its home unless the
    instance configuration names other storage, so a home per data dir gives each data dir its own
    run history and partitions: tenants materialized with a benchmark's or a test's data dir never
    show in the demo's UI. The home's ``dagster.yaml`` is the committed :data:`INSTANCE_CONFIG`,
    copied there again whenever it changed, so its concurrency settings hold for every data dir.
    """
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_HOME"):
        home = Path(env["DAGSTER_HOME"]).resolve()
        if not home.is_dir():
            raise InvalidInput(f"DAGSTER_HOME={home} is not a directory; create it (with a dagster.yaml) "
                               "or unset DAGSTER_HOME to use the data dir's own Dagster instance")
        return home
    home = (settings.data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    _refresh_instance_config(home / "dagster.yaml")
    return home


def _refresh_instance_config(target: Path) -> None:
    if not INSTANCE_CONFIG.is_file():  # installed without the repository: Dagster's defaults
        target.touch()
        return
    text = _COPY_HEADER + INSTANCE_CONFIG.read_text()
    if target.is_file() and target.read_text() == text:
        return
    # Written aside and renamed, so a `dagster dev` or another CLI reading it never sees half a file.
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, target)


@dataclass
class RunOutcome:
    tenant: str
    run_id: str
    success: bool
    failures: list[tuple[str, str]] = field(default_factory=list)  # (step, reason)


def _root_cause(error) -> str:
    """The user's reason, not Dagster's wrapper ("Error occurred while executing op ...")."""
    if error is None:
        return "failed"
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def ensure_partition(instance: DagsterInstance, tenant: str) -> None:
    if not instance.has_dynamic_partition(TENANTS, tenant):
        instance.add_dynamic_partitions(TENANTS, [tenant])


def materialize_tenant(instance: DagsterInstance, tenant: str, say: Callable[[str], None] = print) -> RunOutcome:
    """Run ``materialize_tenant`` for the tenant in this process. Runs of this host whose process
    died are failed and their pool slots freed first, and again if this run waits for a slot one of
    them holds; ``say`` hears about those, and which live run this one waits for."""
    ensure_partition(instance, tenant)
    install_claim_backoff()
    recover_dead_runs(instance, say)
    job = defs().resolve_job_def(MATERIALIZE_TENANT)
    run_id = str(uuid.uuid4())  # as Dagster makes them; known before the run starts
    try:
        with watching_slot_waits(instance, run_id, say):
            result = job.execute_in_process(
                partition_key=tenant,
                instance=instance,
                raise_on_error=False,
                run_id=run_id,
                tags={TENANT_TAG: tenant, **RunProcess.current().tags()},
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
    finally:
        release_slots(instance, run_id)
    failures: list[tuple[str, str]] = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            failures.append((event.step_key or "?", _root_cause(event.step_failure_data.error)))
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.blocking:
                failures.append((event.step_key or "?", f"blocking check {evaluation.check_name} failed"))
    return RunOutcome(tenant, result.run_id, result.success, failures)


def materialize_in_process(
    data_dir: str, tenant: str, instance: DagsterInstance | None = None, selection: list[str] | None = None,
    log_level: str = "DEBUG",
):
    """Every asset of a tenant (or the named ones) on a given (default: ephemeral) instance with an
    explicit data dir, for tests and benchmarks. Returns Dagster's ``ExecuteInProcessResult``."""
    from dagster import materialize

    from assets.resources import LodestarResource

    instance = instance or DagsterInstance.ephemeral()
    ensure_partition(instance, tenant)
    return materialize(
        all_assets(),
        selection=selection,
        partition_key=tenant,
        instance=instance,
        resources={"lodestar": LodestarResource(data_dir=data_dir)},
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


class _Say(logging.Handler):
    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.say(f"  {record.getMessage()}")
        except Exception:
            self.handleError(record)


@contextmanager
def _progress_to(say: Callable[[str], None]) -> Iterator[None]:
    """The assets' progress lines (one per stage, with counts) go to ``say``, indented, while the
    block runs, and nowhere else."""
    handler, level, propagate = _Say(say), progress_log.level, progress_log.propagate
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False
    try:
        yield
    finally:
        progress_log.removeHandler(handler)
        progress_log.setLevel(level)
        progress_log.propagate = propagate


def materialize_tenants(
    settings: Settings, tenants: list[str], say: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Materialize each tenant's partition of every asset, one tenant after another, through the
    instance in :func:`dagster_home`, telling ``say`` the progress, the time each took and, for a
    failed run, every failing step with its reason. The assets read the ``LODESTAR_*`` environment,
    so ``settings`` are the environment's (``Settings.from_env()``)."""
    outcomes = []
    with DagsterInstance.from_config(str(dagster_home(settings))) as instance, _progress_to(say):
        for tenant in tenants:
            say(f"Materializing tenant {tenant!r} (every asset, through Dagster)...")
            started = time.monotonic()
            outcome = materialize_tenant(instance, tenant, say)
            if outcome.success:
                say(f"Tenant {tenant!r} materialized in {time.monotonic() - started:.1f}s (run {outcome.run_id}).")
            else:
                say(f"Tenant {tenant!r}: run {outcome.run_id} FAILED.")
                for step, reason in outcome.failures or [("?", "see the run in the Dagster UI")]:
                    say(f"  failing step: {step}: {reason}")
            outcomes.append(outcome)
    return outcomes


def _materialize_share(environ: dict[str, str], tenants: list[str]) -> list[RunOutcome]:
    """One process's share of :func:`materialize_in_processes` (runs in a spawned process)."""
    os.environ.update(environ)
    return materialize_tenants(Settings.from_env(), tenants, say=lambda line: print(line, flush=True))


def materialize_in_processes(
    settings: Settings, tenants: list[str], processes: int, say: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """:func:`materialize_tenants` split over ``processes`` processes, each taking every
    ``processes``-th tenant and running them one after another on the same instance. Each tenant
    stays one run of its own (its own partition, checks and failure: a tenant whose data fails a
    check holds up no other), and each process pays for its start, imports and embedding model
    once for its whole share instead of once per tenant. Lines of progress come from every process
    as they happen."""
    if processes < 1:
        raise InvalidInput(f"--processes must be 1 or more, got {processes}")
    processes = min(processes, len(tenants)) or 1
    if processes == 1:
        return materialize_tenants(settings, tenants, say)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [tenants[k::processes] for k in range(processes)]
    say(f"Materializing {len(tenants)} tenants in {processes} processes, one run per tenant...")
    # The instance's storage is created (and its partitions added) here, once: processes that
    # each created a fresh instance's schema at the same moment would race on its migrations.
    with DagsterInstance.from_config(str(dagster_home(settings))) as instance:
        instance.get_runs(limit=1)
        known = set(instance.get_dynamic_partitions(TENANTS))
        if missing := [t for t in tenants if t not in known]:
            instance.add_dynamic_partitions(TENANTS, missing)
    environ = {k: v for k, v in os.environ.items() if k.startswith(("LODESTAR_", "DAGSTER_"))}
    environ["LODESTAR_DATA_DIR"] = str(settings.data_dir)
    by_tenant: dict[str, RunOutcome] = {}
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(share, pool.submit(_materialize_share, environ, share)) for share in shares]
        for share, future in futures:
            try:
                by_tenant.update((outcome.tenant, outcome) for outcome in future.result())
            except Exception as exc:  # noqa: BLE001 - a process that died (killed, out of memory) fails its share only
                say(f"A materializing process failed ({type(exc).__name__}: {exc}); its tenants count as failed "
                    "here (the runs it finished are in the instance): run them again")
                reason = [("process", f"{type(exc).__name__}: {exc}")]
                by_tenant.update((t, RunOutcome(t, "", False, reason)) for t in share if t not in by_tenant)
    return [by_tenant[t] for t in tenants]
