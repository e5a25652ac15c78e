"""Keeping tenants fresh without anyone pressing "materialize".

* ``tenant_discovery``: the ``tenants`` partitions follow the CDP's tenant list (added and removed).
* ``cdp_changes``: per tenant, the newest ``(updated_at, id)`` of items, users and events, read for
  every tenant at once (one CDP query per entity and tick); when it moved past the cursor, one run
  of every asset of the tenant (``materialize_tenant``) is requested with
  ``run_key = tenant:watermarks`` (re-evaluating a tick never duplicates work). Every stage is
  incremental (extracts past their watermark, embeddings by content hash, the model refitted only
  when its inputs changed, the index a copy plus the changed items), so the one run does what
  changed, and the change reaches the API in one hop: no second run waiting for an automation tick.
  When that run failed, a later tick requests it again (up to ``MAX_RETRIES`` times).
* ``nightly_rebuild``: a full rebuild of every tenant (re-reading every CDP row), on a cron.

Intervals and the cron come from the settings, so the sensors and the schedule are built by
:func:`build_sensors` and :func:`build_schedule` when the code location loads, not at import.
"""

from __future__ import annotations

import json
import time
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
from pipelines.jobs import materialize_tenant

MAX_RETRIES = 3
IN_FLIGHT = (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED)
RUN_KEY_TAG = "dagster/run_key"
# Run keys looked up per run-storage query (bound parameters of one SQL statement).
RUN_KEYS_PER_QUERY = 500
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


def send_ads_notifications(context: SensorEvaluationContext, lodestar: LodestarResource) -> SkipReason:
    """Queues what happened to advertisers' campaigns for their webhooks and delivers what is due
    (lodestar.ads.notify: signed, retried with backoff, every attempt logged)."""
    from lodestar.ads import notify

    now = time.time()
    with lodestar.cdp() as store:
        tenants = sorted({w["tenant"] for w in store.list_webhooks() if w["status"] == "active"})
        queued = sum(notify.queue_new(store, tenant, now) for tenant in tenants)
        sent = notify.deliver_due(store, now, notify.http_post)
    summary = (f"{len(tenants)} tenants with webhooks: {queued} events queued; {sent['delivered']} delivered, "
               f"{sent['retried']} to retry, {sent['failed']} failed")
    if queued or any(sent.values()):
        context.log.info(summary)
    return SkipReason(summary)


def _latest_run_statuses(context: SensorEvaluationContext, run_keys: list[str]) -> dict[str, DagsterRunStatus]:
    """The status of the newest run of each of ``run_keys`` that has one, from one run-storage
    query per ``RUN_KEYS_PER_QUERY`` keys (not one per tenant)."""
    statuses: dict[str, DagsterRunStatus] = {}
    for start in range(0, len(run_keys), RUN_KEYS_PER_QUERY):
        chunk = run_keys[start:start + RUN_KEYS_PER_QUERY]
        for run in context.instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: chunk})):  # newest first
            statuses.setdefault(run.tags[RUN_KEY_TAG], run.status)
    return statuses


def request_changed_tenants(context: SensorEvaluationContext, lodestar: LodestarResource) -> SensorResult:
    """Requests a run of every asset of a tenant when its items, users or events changed in the CDP.

    A tenant whose last requested run is still queued or running gets no second one: that run reads
    the CDP when it gets there, and the next tick after it ends requests one run for whatever came
    meanwhile (events arriving every second must not queue a run per tick).

    A tick reads every tenant's watermarks with one CDP query per entity, and the runs it still
    waits on with one run-storage query (per ``RUN_KEYS_PER_QUERY`` of them): no query per tenant.
    A run that succeeded or was canceled is not looked up again."""
    cursor: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    tenants = context.instance.get_dynamic_partitions(TENANTS)
    with lodestar.cdp() as store:
        latest = {entity: store.latest_watermarks(entity) for entity in ENTITIES}
    marks: dict[str, str] = {}
    for tenant in tenants:
        found = [latest[entity].get(tenant) for entity in ENTITIES]
        if any(m is not None for m in found):  # else nothing imported yet
            marks[tenant] = "|".join(m.encode() if m else "-" for m in found)
    waiting = [t for t in marks if cursor.get(t, {}).get("run_key")]
    statuses = _latest_run_statuses(context, [cursor[t]["run_key"] for t in waiting])
    requests = []
    for tenant in waiting:
        state = cursor[tenant]
        status = statuses.get(state["run_key"])
        if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.CANCELED):
            cursor[tenant] = {k: v for k, v in state.items() if k != "run_key"}  # done: stop looking it up
        elif status == DagsterRunStatus.FAILURE and state["watermark"] == marks[tenant] and state["attempt"] < MAX_RETRIES:
            attempt = state["attempt"] + 1
            run_key = f"{tenant}:{state['watermark']}:retry{attempt}"
            requests.append(RunRequest(partition_key=tenant, run_key=run_key, tags={"lodestar/trigger": "retry"}))
            cursor[tenant] = {**state, "run_key": run_key, "attempt": attempt}
        elif status == DagsterRunStatus.FAILURE and state["watermark"] == marks[tenant]:
            cursor[tenant] = {k: v for k, v in state.items() if k != "run_key"}  # retries spent: wait for a change
    for tenant, watermark in marks.items():
        state = cursor.get(tenant, {})
        if state.get("watermark") == watermark:
            continue
        if state.get("run_key") and statuses.get(state["run_key"]) in IN_FLIGHT:
            continue  # its run reads the change when it gets there; a later tick covers the rest
        run_key = f"{tenant}:{watermark}"
        requests.append(RunRequest(partition_key=tenant, run_key=run_key, tags={"lodestar/trigger": "cdp_change"}))
        cursor[tenant] = {"watermark": watermark, "run_key": run_key, "attempt": 0}
    for tenant in set(cursor) - set(tenants):
        del cursor[tenant]
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def rebuild_every_tenant(context: ScheduleEvaluationContext):
    """A full rebuild of every tenant (every CDP row re-read)."""
    day = (context.scheduled_execution_time or datetime.now(UTC)).strftime("%Y-%m-%d")
    for tenant in context.instance.get_dynamic_partitions(TENANTS):
        yield RunRequest(partition_key=tenant, run_key=f"{tenant}:nightly:{day}", tags={FULL_REBUILD_TAG: "true"})


# Dagster's sensor daemon looks at its sensors every 5 s and evaluates those whose minimum interval
# has passed since their last tick. A minimum of exactly 5 s is often a few milliseconds short when
# the next look comes, so every other tick would wait 10 s: an interval up to the loop's is asked
# for as "every look".
DAEMON_LOOP_S = 5


def minimum_interval(settings: Settings) -> int:
    """The sensors' ``minimum_interval_seconds`` for ``LODESTAR_SENSOR_INTERVAL``: itself above the
    daemon's 5 s loop, else 1 (a tick on every loop, about every 5 s)."""
    return settings.sensor_interval_s if settings.sensor_interval_s > DAEMON_LOOP_S else 1


# Tenants come and go far less often than their data changes: discovery ticks at most this often
# (each tick is a gRPC call into the code server and a CDP query), the change sensor at the setting.
DISCOVERY_INTERVAL_S = 30
NOTIFY_INTERVAL_S = 30


def build_sensors(settings: Settings) -> list[SensorDefinition]:
    """``cdp_changes`` at the settings' interval, ``tenant_discovery`` every 30 s (or the setting when longer)."""
    return [
        sensor(name="tenant_discovery", minimum_interval_seconds=max(DISCOVERY_INTERVAL_S, settings.sensor_interval_s),
               default_status=DefaultSensorStatus.RUNNING,
               description="Adds a partition for each CDP tenant and removes those of deleted tenants.",
               )(discover_tenants),
        sensor(name="cdp_changes", job=materialize_tenant, minimum_interval_seconds=minimum_interval(settings),
               default_status=DefaultSensorStatus.RUNNING,
               description="Requests one run of every asset of a tenant (each stage incremental) when its items, "
                           "users or events changed in the CDP.",
               )(request_changed_tenants),
        sensor(name="ads_notifications", minimum_interval_seconds=NOTIFY_INTERVAL_S,
               default_status=DefaultSensorStatus.RUNNING,
               description="Retail media: queues budget, end-of-line-item and ROAS/iROAS events for advertisers' "
                           "webhooks and delivers them, signed (HMAC-SHA256), retried with backoff, every attempt "
                           "logged; a webhook failing for a day is disabled.",
               )(send_ads_notifications),
    ]


def build_schedule(settings: Settings) -> ScheduleDefinition:
    """``nightly_rebuild`` on the settings' cron (LODESTAR_REBUILD_CRON)."""
    return schedule(name="nightly_rebuild", cron_schedule=settings.rebuild_cron, job=materialize_tenant,
                    default_status=DefaultScheduleStatus.RUNNING,
                    description="A full rebuild of every tenant (every CDP row re-read); cron from LODESTAR_REBUILD_CRON.",
                    )(rebuild_every_tenant)
