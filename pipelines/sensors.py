"""Keeping tenants fresh without anyone pressing "materialize".

* ``tenant_discovery``: the ``tenants`` partitions follow the CDP's tenant list (added and removed).
* ``cdp_changes``: per tenant, the newest ``(updated_at, id)`` of items, users and events; when it
  moved past the cursor, the tenant's extracts are requested with ``run_key = tenant:watermarks``
  (re-evaluating a tick never duplicates work); everything downstream follows by declarative
  automation. When that run failed, a later tick requests it again (up to ``MAX_RETRIES`` times).
* ``nightly_rebuild``: a full rebuild of every tenant (re-reading every CDP row), on a cron.

Intervals and the cron come from the settings, so the sensors and the schedule are built by
:func:`build_sensors` and :func:`build_schedule` when the code location loads, not at import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from assets.partitions import FULL_REBUILD_TAG, TENANTS, tenants_partitions
from assets.resources import LodestarResource
from lodestar.cdp import ENTITIES
from lodestar.settings import Settings
from pipelines.jobs import extract_job, materialize_tenant

MAX_RETRIES = 3
EXTRACTS = [AssetKey(f"cdp_{entity}") for entity in ENTITIES]


def discover_tenants(context: SensorEvaluationContext, lodestar: LodestarResource) -> SensorResult | SkipReason:
    """Adds a partition for each CDP tenant and removes those of deleted tenants."""
    with lodestar.cdp() as store:
        current = {t["name"] for t in store.list_tenants()}
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    added, removed = sorted(current - known), sorted(known - current)
    if not added and not removed:
        return SkipReason(f"{len(known)} tenants, no change")
    requests = []
    if added:
        requests.append(tenants_partitions.build_add_request(added))
    if removed:
        requests.append(tenants_partitions.build_delete_request(removed))
    context.log.info(f"tenants added: {added or 'none'}; removed: {removed or 'none'}")
    return SensorResult(dynamic_partitions_requests=requests)


def _failed(context: SensorEvaluationContext, run_key: str) -> bool:
    runs = context.instance.get_runs(filters=RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return bool(runs) and runs[0].status == DagsterRunStatus.FAILURE


def request_changed_tenants(context: SensorEvaluationContext, lodestar: LodestarResource) -> SensorResult:
    """Requests a tenant's extracts when its items, users or events changed in the CDP."""
    cursor: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    requests = []
    with lodestar.cdp() as store:
        for tenant in context.instance.get_dynamic_partitions(TENANTS):
            marks = [store.latest_watermark(tenant, entity) for entity in ENTITIES]
            if all(m is None for m in marks):
                continue  # nothing imported yet
            watermark = "|".join(m.encode() if m else "-" for m in marks)
            state = cursor.get(tenant, {})
            if state.get("watermark") != watermark:
                run_key = f"{tenant}:{watermark}"
                requests.append(RunRequest(partition_key=tenant, run_key=run_key, tags={"lodestar/trigger": "cdp_change"}))
                cursor[tenant] = {"watermark": watermark, "run_key": run_key, "attempt": 0}
            elif state.get("run_key") and state["attempt"] < MAX_RETRIES and _failed(context, state["run_key"]):
                attempt = state["attempt"] + 1
                run_key = f"{tenant}:{watermark}:retry{attempt}"
                requests.append(RunRequest(partition_key=tenant, run_key=run_key, tags={"lodestar/trigger": "retry"}))
                cursor[tenant] = {**state, "run_key": run_key, "attempt": attempt}
    for tenant in set(cursor) - set(context.instance.get_dynamic_partitions(TENANTS)):
        del cursor[tenant]
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def rebuild_every_tenant(context: ScheduleEvaluationContext):
    """A full rebuild of every tenant (every CDP row re-read)."""
    day = (context.scheduled_execution_time or datetime.now(UTC)).strftime("%Y-%m-%d")
    for tenant in context.instance.get_dynamic_partitions(TENANTS):
        yield RunRequest(partition_key=tenant, run_key=f"{tenant}:nightly:{day}", tags={FULL_REBUILD_TAG: "true"})


def build_sensors(settings: Settings) -> list[SensorDefinition]:
    """``tenant_discovery`` and ``cdp_changes`` at the settings' interval."""
    return [
        sensor(name="tenant_discovery", minimum_interval_seconds=settings.sensor_interval_s,
               default_status=DefaultSensorStatus.RUNNING,
               description="Adds a partition for each CDP tenant and removes those of deleted tenants.",
               )(discover_tenants),
        sensor(name="cdp_changes", job=extract_job, minimum_interval_seconds=settings.sensor_interval_s,
               default_status=DefaultSensorStatus.RUNNING,
               description="Requests a tenant's extracts when its items, users or events changed in the CDP.",
               )(request_changed_tenants),
    ]


def build_schedule(settings: Settings) -> ScheduleDefinition:
    """``nightly_rebuild`` on the settings' cron (LODESTAR_REBUILD_CRON)."""
    return schedule(name="nightly_rebuild", cron_schedule=settings.rebuild_cron, job=materialize_tenant,
                    default_status=DefaultScheduleStatus.RUNNING,
                    description="A full rebuild of every tenant (every CDP row re-read); cron from LODESTAR_REBUILD_CRON.",
                    )(rebuild_every_tenant)
