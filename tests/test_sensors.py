"""Sensors, schedule and declarative automation, evaluated without a daemon."""

import json
from collections import Counter
from datetime import UTC

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    SensorResult,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    job,
    op,
)

import lodestar.cdp
from assets.partitions import FULL_REBUILD_TAG, TENANTS
from assets.resources import LodestarResource
from lodestar.cdp import cdp_session, open_cdp
from lodestar.cdp.sqlite import SqliteCdpStore
from lodestar.records import parse_item
from lodestar.settings import Settings
from pipelines.definitions import build_definitions

defs = build_definitions(Settings())
tenant_discovery = defs.get_sensor_def("tenant_discovery")
cdp_changes = defs.get_sensor_def("cdp_changes")
nightly_rebuild = defs.get_schedule_def("nightly_rebuild")


@pytest.fixture()
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _context(instance, settings, cursor=None):
    return build_sensor_context(instance=instance, cursor=cursor,
                                resources={"lodestar": LodestarResource(data_dir=str(settings.data_dir))})


@op
def _extract_fails() -> None:
    raise RuntimeError("the CDP went away")


@job(name="materialize_tenant")  # the sensor's job, as far as its run history goes
def _failing_materialize_tenant() -> None:
    _extract_fails()


def _fail_a_run(instance: DagsterInstance, run_key: str) -> None:
    """A failed run of the tenant carrying ``run_key``, as the sensor would find one."""
    result = _failing_materialize_tenant.execute_in_process(instance=instance, tags={"dagster/run_key": run_key},
                                                          raise_on_error=False)
    assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.FAILURE


def test_discovery_adds_and_removes_tenant_partitions(instance, settings, store):
    store.create_tenant("acme")
    store.create_tenant("zeta")
    result = tenant_discovery(_context(instance, settings))
    assert isinstance(result, SensorResult)
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["acme", "zeta"]]
    instance.add_dynamic_partitions(TENANTS, ["acme", "zeta", "gone"])
    store.delete_tenant("zeta")
    result = tenant_discovery(_context(instance, settings))
    assert [(type(r).__name__, r.partition_keys) for r in result.dynamic_partitions_requests] == [
        ("DeleteDynamicPartitionsRequest", ["gone", "zeta"])]


def test_a_change_requests_one_run_of_every_asset_at_a_short_interval():
    # One hop from a CDP change to the API: the sensor's run is the whole tenant (each stage
    # incremental), not the extracts followed by an automation tick and a second run.
    assert cdp_changes.job_name == "materialize_tenant"
    assert defs.resolve_job_def("materialize_tenant").asset_layer.selected_asset_keys == set(
        defs.resolve_asset_graph().get_all_asset_keys())
    # The default (5 s) is every look of Dagster's 5 s sensor loop; a longer interval is kept as set.
    assert Settings().sensor_interval_s == 5 and cdp_changes.minimum_interval_seconds == 1
    assert build_definitions(Settings(sensor_interval_s=30)).get_sensor_def("cdp_changes").minimum_interval_seconds == 30


def test_change_sensor_requests_once_per_watermark_and_retries_failures(instance, settings, store):
    store.create_tenant("acme")
    store.create_tenant("empty")
    instance.add_dynamic_partitions(TENANTS, ["acme", "empty"])
    store.upsert_items("acme", [parse_item({"id": "1", "title": "one"})])
    first = cdp_changes(_context(instance, settings))
    assert [r.partition_key for r in first.run_requests] == ["acme"]  # nothing to do for an empty tenant
    run_key = first.run_requests[0].run_key
    assert run_key.startswith("acme:") and store.latest_watermark("acme", "items").encode() in run_key
    quiet = cdp_changes(_context(instance, settings, first.cursor))
    assert quiet.run_requests == []  # same watermark: no duplicate work
    store.upsert_items("acme", [parse_item({"id": "1", "title": "one, renamed"})])
    changed = cdp_changes(_context(instance, settings, quiet.cursor))
    assert len(changed.run_requests) == 1 and changed.run_requests[0].run_key != run_key

    _fail_a_run(instance, run_key=changed.run_requests[0].run_key)
    retry = cdp_changes(_context(instance, settings, changed.cursor))
    assert retry.run_requests[0].run_key.endswith(":retry1")
    assert json.loads(retry.cursor)["acme"]["attempt"] == 1


@op
def _extract_succeeds() -> None:
    pass


@job(name="materialize_tenant")
def _succeeding_materialize_tenant() -> None:
    _extract_succeeds()


class TickCost:
    """What the ``cdp_changes`` sensor asks of the CDP store and of Dagster's run storage: port
    calls and SQL ``SELECT``s (the stores a tick opens), and run lookups (``instance.get_runs``)."""

    def __init__(self, monkeypatch, instance: DagsterInstance) -> None:
        self.port_calls: Counter[str] = Counter()
        self.selects = 0
        self.run_lookups = 0
        cost = self

        class CountingStore(SqliteCdpStore):
            def _conn(self):
                conn = super()._conn()
                conn.set_trace_callback(cost._statement)
                return conn

            def __getattribute__(self, name):
                if name[0].islower() and name not in ("close", "path"):  # the port's methods
                    cost.port_calls[name] += 1
                return super().__getattribute__(name)

        get_runs = instance.get_runs

        def counted_get_runs(*args, **kwargs):
            cost.run_lookups += 1
            return get_runs(*args, **kwargs)

        monkeypatch.setattr(lodestar.cdp, "open_cdp", lambda settings: CountingStore(settings.cdp_path))
        monkeypatch.setattr(instance, "get_runs", counted_get_runs)

    def _statement(self, sql: str) -> None:
        self.selects += sql.lstrip().upper().startswith("SELECT")

    def tick(self, instance, settings, cursor=None) -> tuple[SensorResult, tuple]:
        """One tick of ``cdp_changes``, and what it cost: (port calls, SELECTs, run lookups)."""
        self.port_calls.clear()
        self.selects = self.run_lookups = 0
        result = cdp_changes(_context(instance, settings, cursor))
        return result, (dict(self.port_calls), self.selects, self.run_lookups)


def _tenants_with_items(settings: Settings, instance: DagsterInstance, n: int) -> list[str]:
    names = [f"t{k:04d}" for k in range(n)]
    with cdp_session(settings) as store:
        for name in names:
            store.create_tenant(name)
            store.upsert_items(name, [parse_item({"id": "1", "title": f"one of {name}"})])
    instance.add_dynamic_partitions(TENANTS, names)
    return names


def test_a_tick_makes_the_same_few_queries_at_3_and_at_40_tenants(tmp_path, monkeypatch):
    """One CDP query per entity for every tenant's watermarks, one run-storage query for the runs
    the sensor waits on: the count does not grow with the tenants."""
    costs = {}
    for n in (3, 40):
        settings = Settings(data_dir=tmp_path / f"var{n}")
        with DagsterInstance.ephemeral() as instance:
            names = _tenants_with_items(settings, instance, n)
            cost = TickCost(monkeypatch, instance)
            first, first_cost = cost.tick(instance, settings)
            assert len(first.run_requests) == n
            quiet, quiet_cost = cost.tick(instance, settings, first.cursor)
            assert quiet.run_requests == []
            _fail_a_run(instance, first.run_requests[0].run_key)
            _succeeding_materialize_tenant.execute_in_process(
                instance=instance, tags={"dagster/run_key": first.run_requests[1].run_key})
            retry, retry_cost = cost.tick(instance, settings, quiet.cursor)
            assert [r.run_key for r in retry.run_requests] == [f"{first.run_requests[0].run_key}:retry1"]
            state = json.loads(retry.cursor)
            assert "run_key" not in state[names[1]] and state[names[2]]["run_key"]  # done: not looked up again
            monkeypatch.undo()
        costs[n] = [first_cost, quiet_cost, retry_cost]
    every_entity = {"latest_watermarks": 3}
    assert costs[3] == costs[40] == [(every_entity, 3, 0), (every_entity, 3, 1), (every_entity, 3, 1)]


def test_a_tenant_with_a_run_in_flight_gets_no_second_one(instance, settings, store):
    """Events arriving every second must not queue a run per tick: while the tenant's run is queued
    or running, changes wait for it to end, then one run covers all of them."""
    from dagster._core.test_utils import create_run_for_test

    store.create_tenant("acme")
    instance.add_dynamic_partitions(TENANTS, ["acme"])
    store.upsert_items("acme", [parse_item({"id": "1", "title": "one"})])
    first = cdp_changes(_context(instance, settings))
    run_key = first.run_requests[0].run_key
    create_run_for_test(instance, job_name="materialize_tenant", status=DagsterRunStatus.STARTED,
                        tags={"dagster/run_key": run_key})
    cursor = first.cursor
    for n in range(3):  # three ticks, a change before each, the run still going
        store.upsert_items("acme", [parse_item({"id": "1", "title": f"one, edit {n}"})])
        tick = cdp_changes(_context(instance, settings, cursor))
        assert tick.run_requests == [], "a second run was queued behind the running one"
        cursor = tick.cursor
    create_run_for_test(instance, job_name="materialize_tenant", status=DagsterRunStatus.SUCCESS,
                        tags={"dagster/run_key": run_key})  # the newest run of that key: it ended
    after = cdp_changes(_context(instance, settings, cursor))
    assert len(after.run_requests) == 1 and after.run_requests[0].run_key != run_key
    assert store.latest_watermark("acme", "items").encode() in after.run_requests[0].run_key
    assert cdp_changes(_context(instance, settings, after.cursor)).run_requests == []


def test_nightly_schedule_rebuilds_every_tenant_in_full():
    from datetime import datetime

    from dagster import instance_for_test

    with instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS, ["acme", "zeta"])
        when = datetime(2026, 11, 21, 3, tzinfo=UTC)
        requests = list(nightly_rebuild(build_schedule_context(instance=instance, scheduled_execution_time=when)))
    assert sorted(r.partition_key for r in requests) == ["acme", "zeta"]
    assert all(r.tags[FULL_REBUILD_TAG] == "true" for r in requests)
    assert requests[0].run_key.endswith(":nightly:2026-11-21")


@pytest.mark.model
def test_downstream_follows_updated_extracts_by_automation(instance, settings):
    from pipelines.run import materialize_in_process
    from tests.conftest import load_demo_tenant

    store = open_cdp(settings)
    try:
        load_demo_tenant(store, settings, "shop", "shop", n_items=24, n_users=6)
    finally:
        store.close()
    extracts = ["cdp_items", "cdp_users", "cdp_events"]
    keys = sorted(defs.resolve_asset_graph().get_all_asset_keys(), key=str)

    def requested(result) -> set[str]:
        return {k.to_user_string() for k in keys if "shop" in result.get_requested_partitions(k)}

    cursor = evaluate_automation_conditions(defs=defs, instance=instance).cursor
    assert materialize_in_process(str(settings.data_dir), "shop", instance, selection=extracts).success
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    downstream = {"item_features", "user_features", "item_embeddings", "collab_model", "offline_evaluation",
                  "tenant_index", "attribution_report", "experiment_report", "ads_report",
                  "audience_segments", "ad_quality_model"}
    # A first version waits one tick for its checks before it is published; the sensor, not
    # automation, refreshes the extracts.
    assert requested(tick) == downstream
    assert materialize_in_process(str(settings.data_dir), "shop", instance, selection=sorted(downstream)).success
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert requested(tick) == {"published_index"}
    assert materialize_in_process(str(settings.data_dir), "shop", instance, selection=["published_index"]).success
    # From then on one tick after a CDP change requests everything, publishing included.
    store = open_cdp(settings)
    try:
        store.upsert_items("shop", [parse_item({"id": "p00001", "title": "a renamed product"})])
    finally:
        store.close()
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert materialize_in_process(str(settings.data_dir), "shop", instance, selection=extracts).success
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert requested(tick) == downstream | {"published_index"}
    assert materialize_in_process(str(settings.data_dir), "shop", instance,
                                  selection=sorted(downstream | {"published_index"})).success
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert requested(tick) == set()

    # What the change sensor requests: one run of every asset. Automation then has nothing left to
    # do (no second run of what that run already did).
    store = open_cdp(settings)
    try:
        store.upsert_items("shop", [parse_item({"id": "p00002", "title": "another renamed product"})])
    finally:
        store.close()
    result = materialize_in_process(str(settings.data_dir), "shop", instance)
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {
        *extracts, *downstream, "published_index"}
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert requested(tick) == set()
