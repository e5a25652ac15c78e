"""What the console shows of the pipeline: a tenant's runs with each step's progress and each asset
check's result, and every tenant's latest run, read from the Dagster instance of the data dir
(:func:`pipelines.run.dagster_home`) as plain data. The console calls these in a helper process of
its own (serving/console/pipeline.py), so the serving process never imports Dagster."""

from __future__ import annotations

from functools import cache
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from lodestar.settings import Settings
from pipelines.run import dagster_home

PARTITION_TAG = "dagster/partition"  # set on every run of a tenant's partition: the CLI's, the sensors'
IN_FLIGHT = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
_STEP_EVENTS = {DagsterEventType.STEP_START: "running", DagsterEventType.STEP_SUCCESS: "succeeded",
                DagsterEventType.STEP_FAILURE: "failed", DagsterEventType.STEP_SKIPPED: "skipped",
                DagsterEventType.STEP_UP_FOR_RETRY: "retrying"}


@cache
def _instance() -> DagsterInstance:
    """One instance for the helper process's life (opening it reads its configuration and storage)."""
    return DagsterInstance.from_config(str(dagster_home(Settings.from_env())))


def _run(record: Any) -> dict[str, Any]:
    run = record.dagster_run
    return {"run_id": run.run_id, "status": run.status.value, "job": run.job_name,
            "tenant": run.tags.get(PARTITION_TAG), "in_flight": run.status in IN_FLIGHT,
            "start": record.start_time, "end": record.end_time, "created": record.create_timestamp.timestamp()}


def tenant_runs(tenant: str, limit: int = 5, steps: bool = True) -> list[dict[str, Any]]:
    """The tenant's newest runs, newest first; the first with its ``steps`` (every step of its plan,
    in order, with its status and times) and ``checks`` (each asset check's result)."""
    instance = _instance()
    records = instance.get_run_records(RunsFilter(tags={PARTITION_TAG: tenant}), limit=limit)
    runs = [_run(r) for r in records]
    if steps and records:
        runs[0].update(_progress(instance, records[0].dagster_run))
    return runs


def _progress(instance: DagsterInstance, run: Any) -> dict[str, Any]:
    planned: list[str] = []
    if run.execution_plan_snapshot_id:
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        planned = list(plan.step_keys_to_execute)
    steps = {key: {"step": key, "status": "waiting", "start": None, "end": None, "error": ""} for key in planned}
    checks = []
    for entry in instance.all_logs(run.run_id, of_type={*_STEP_EVENTS, DagsterEventType.ASSET_CHECK_EVALUATION}):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            checks.append({"asset": data.asset_key.to_user_string(), "check": data.check_name, "passed": data.passed,
                           "blocking": bool(data.blocking), "severity": data.severity.value})
            continue
        step = steps.setdefault(event.step_key, {"step": event.step_key, "status": "waiting", "start": None,
                                                 "end": None, "error": ""})
        step["status"] = _STEP_EVENTS[event.event_type]
        if event.event_type == DagsterEventType.STEP_START:
            step["start"] = entry.timestamp
        else:
            step["end"] = entry.timestamp
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            step["error"] = error.message.strip() if error is not None else "failed"
    return {"steps": list(steps.values()), "checks": checks}


def latest_runs(limit: int = 1000) -> dict[str, dict[str, Any]]:
    """Tenant -> its newest run, among the instance's newest ``limit`` runs."""
    out: dict[str, dict[str, Any]] = {}
    for record in _instance().get_run_records(limit=limit):
        run = _run(record)
        if run["tenant"] and run["tenant"] not in out:
            out[run["tenant"]] = run
    return out
