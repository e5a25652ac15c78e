"""Materialize a tenant's partition of every asset through Dagster, recorded in the instance
(``DAGSTER_HOME``) exactly like a run launched from the UI."""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster import DagsterEventType, DagsterInstance

from assets.partitions import TENANTS
from pipelines.definitions import all_assets, defs
from pipelines.jobs import MATERIALIZE_TENANT


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


def materialize_tenant(instance: DagsterInstance, tenant: str) -> RunOutcome:
    ensure_partition(instance, tenant)
    job = defs().resolve_job_def(MATERIALIZE_TENANT)
    result = job.execute_in_process(
        partition_key=tenant,
        instance=instance,
        raise_on_error=False,
        tags={"lodestar/tenant": tenant},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
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
