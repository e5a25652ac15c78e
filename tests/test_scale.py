"""Many tenants on one machine.

- The API opens a tenant's index on its first request and closes it when the tenant goes idle or
  when more than ``max_open`` tenants are open (``serving.indexes.TenantIndexes``); a closed
  tenant's next request opens it again, and a request still using a closed reader finishes.
- The change sensor reads every tenant's watermarks with one CDP query per entity; a tick with no
  change at 1,000 tenants is measured and printed (run with ``-s`` to see it), never asserted.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
from litestar.testing import TestClient

from lodestar.cdp import Watermark, cdp_session
from lodestar.errors import IndexNotReady, InvalidInput
from lodestar.index.edge import EdgeIndexReader, EdgeIndexStore
from lodestar.keys import issue_key
from lodestar.settings import Settings
from serving.indexes import (
    IDLE_AFTER_S,
    MAX_OPEN_TENANTS,
    RETIRE_AFTER_S,
    TenantIndexes,
)

DIM = 8


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _publish(store: EdgeIndexStore, tenant: str, n: int = 6) -> str:
    """A tiny published version: ``n`` items ``i0``.. with random unit vectors."""
    rng = np.random.default_rng(sum(tenant.encode()))
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [{"title": f"{tenant} item {k}", "popularity": k / n, "categories": [], "tags": [], "attributes": {}}
                for k in range(n)]
    builder = store.build(tenant, DIM)
    builder.upsert([f"i{k}" for k in range(n)], vectors, payloads)
    assert builder.finish() == n
    store.publish(tenant, builder.version)
    return builder.version


@pytest.fixture(scope="module")
def published_tenants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    """Settings of a data dir whose tenants t0, t1, t2 each have a published index and an API key
    (the tests only read it), and the keys."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("scale") / "var", embed_model="hashing-64")
    keys = {}
    with cdp_session(settings) as store:
        for tenant in ("t0", "t1", "t2"):
            store.create_tenant(tenant)
            keys[tenant] = issue_key(store, tenant)
            _publish(EdgeIndexStore(settings.data_dir), tenant)
    return settings, keys


@pytest.fixture()
def edge(published_tenants, monkeypatch):
    """An Edge index store over :func:`published_tenants`, and the readers it opened and closed."""
    store = EdgeIndexStore(published_tenants[0].data_dir)
    opened: list[EdgeIndexReader] = []
    closed: list[EdgeIndexReader] = []
    open_reader, close_reader = EdgeIndexStore.open, EdgeIndexReader.close

    def spy_open(self, tenant, version):
        reader = open_reader(self, tenant, version)
        opened.append(reader)
        return reader

    def spy_close(self):
        closed.append(self)
        close_reader(self)

    monkeypatch.setattr(EdgeIndexStore, "open", spy_open)
    monkeypatch.setattr(EdgeIndexReader, "close", spy_close)
    return store, opened, closed


def _query(published) -> list[str]:
    """What a request does with a version: a nearest-neighbour query."""
    return [hit.item_id for hit in published.reader.nearest(np.ones(DIM, dtype=np.float32) / DIM**0.5, 3)]


def test_an_idle_tenant_is_closed_and_its_next_request_opens_it_again(edge):
    store, opened, closed = edge
    clock = Clock()
    indexes = TenantIndexes(store, idle_s=600, clock=clock, sweep_every_s=None)
    assert indexes.loaded() == {}  # nothing opened before a request asks
    first = indexes.get("t0")
    assert len(_query(first)) == 3
    clock.advance(599)
    indexes.get("t1")  # a request of another tenant sweeps too: t0 is not idle long enough yet
    assert set(indexes.loaded()) == {"t0", "t1"}
    clock.advance(2)
    indexes.sweep()  # the background sweep, here by hand: t0 idle for 601 s
    assert set(indexes.loaded()) == {"t1"} and indexes.checked_at("t0") is None
    assert closed == []  # retired, not closed: a request may still be using it
    again = indexes.get("t0")  # reopened on demand, no failed request
    assert again.reader is not first.reader and again.version == first.version and len(_query(again)) == 3
    clock.advance(RETIRE_AFTER_S)
    indexes.sweep()
    assert closed == [first.reader]
    assert [r.tenant for r in opened] == ["t0", "t1", "t0"]
    indexes.close()
    assert set(closed) == set(opened)


def test_the_event_loop_gets_an_open_version_without_io_only_while_its_pointer_is_fresh(edge):
    store, opened, _closed = edge
    clock = Clock()
    indexes = TenantIndexes(store, check_interval_s=0.5, clock=clock, sweep_every_s=None)
    assert indexes.current("t0") is None  # never opened: get() must open it, off the loop
    first = indexes.get("t0")
    assert indexes.current("t0") is first
    clock.advance(0.6)
    assert indexes.current("t0") is None  # the pointer is due a look
    assert indexes.get("t0") is first and indexes.current("t0") is first  # looked, same version
    clock.advance(0.4)
    indexes.sweep()
    assert indexes.current("t0") is first and len(opened) == 1
    indexes.close()


def test_past_the_cap_the_least_recently_queried_tenant_is_closed(edge):
    store, opened, closed = edge
    clock = Clock()
    indexes = TenantIndexes(store, max_open=2, clock=clock, sweep_every_s=None)
    for tenant in ("t0", "t1", "t2"):
        indexes.get(tenant)
        clock.advance(1)
    assert set(indexes.loaded()) == {"t1", "t2"}
    indexes.get("t1")  # t1 used again: t2 is now the least recently used
    indexes.get("t0")
    assert set(indexes.loaded()) == {"t0", "t1"}
    assert [r.tenant for r in opened] == ["t0", "t1", "t2", "t0"]
    clock.advance(RETIRE_AFTER_S)
    indexes.sweep()
    assert sorted(r.tenant for r in closed) == ["t0", "t2"]  # the first t0 reader and t2's
    indexes.close()


def test_a_request_holding_a_reader_that_is_closed_meanwhile_still_completes(edge):
    store, _, closed = edge
    clock = Clock()
    indexes = TenantIndexes(store, max_open=1, clock=clock, sweep_every_s=None)
    held = indexes.get("t0")  # a request of t0 starts and keeps its version
    indexes.get("t1")  # t0 is evicted under it
    assert set(indexes.loaded()) == {"t1"}
    clock.advance(RETIRE_AFTER_S - 1)
    indexes.sweep()
    assert held.reader not in closed and len(_query(held)) == 3  # the request finishes on it
    clock.advance(1)
    indexes.sweep()
    assert closed == [held.reader]  # closed once the grace period is over
    indexes.close()


def test_requests_of_many_threads_over_more_tenants_than_the_cap_never_fail_nor_leak(edge):
    """Threads query three tenants through a cap of one (every request may evict another tenant):
    every query succeeds, and every reader opened is closed by the end (none is lost in a race)."""
    from concurrent.futures import ThreadPoolExecutor

    store, opened, closed = edge
    indexes = TenantIndexes(store, max_open=1, check_interval_s=0.0, sweep_every_s=None)

    def requests(worker: int) -> int:
        for n in range(25):
            assert len(_query(indexes.get(f"t{(worker + n) % 3}"))) == 3
        return 25

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert sum(pool.map(requests, range(6))) == 150
    assert len(indexes.loaded()) == 1
    indexes.close()
    assert len(opened) > 3 and sorted(map(id, closed)) == sorted(map(id, opened))


def test_an_unpublished_tenant_is_not_ready_and_holds_no_reader(edge):
    store, opened, _ = edge
    indexes = TenantIndexes(store, clock=Clock(), sweep_every_s=None)
    with pytest.raises(IndexNotReady, match="lodestar materialize --tenant nobody"):
        indexes.get("nobody")
    assert indexes.loaded() == {} and opened == []
    indexes.close()


def test_the_background_sweep_closes_idle_tenants_while_no_request_comes(edge):
    from tests.helpers import wait_until

    store, _, closed = edge
    clock = Clock()
    indexes = TenantIndexes(store, idle_s=10, clock=clock, sweep_every_s=0.01)
    try:
        published = indexes.get("t0")
        clock.advance(10 + RETIRE_AFTER_S)  # idle, then retired for the grace period
        wait_until(lambda: "t0" not in indexes.loaded())
        clock.advance(RETIRE_AFTER_S)
        wait_until(lambda: closed == [published.reader])
    finally:
        indexes.close()


def test_limits_come_from_the_environment_and_bad_values_name_the_variable(tmp_path):
    store = EdgeIndexStore(tmp_path)
    indexes = TenantIndexes.from_env(store, {})
    assert (indexes._idle_s, indexes._max_open) == (IDLE_AFTER_S, MAX_OPEN_TENANTS)
    indexes.close()
    indexes = TenantIndexes.from_env(store, {"LODESTAR_INDEX_IDLE": "120", "LODESTAR_MAX_OPEN_TENANTS": "16"})
    assert (indexes._idle_s, indexes._max_open) == (120.0, 16)
    indexes.close()
    for env in ({"LODESTAR_MAX_OPEN_TENANTS": "0"}, {"LODESTAR_MAX_OPEN_TENANTS": "many"},
                {"LODESTAR_INDEX_IDLE": "nan"}):
        with pytest.raises(InvalidInput, match=next(iter(env))):
            TenantIndexes.from_env(store, env)


def test_the_api_closes_and_reopens_tenants_past_its_cap_without_a_failed_request(published_tenants, monkeypatch):
    from serving.app import create_app

    monkeypatch.setenv("LODESTAR_MAX_OPEN_TENANTS", "1")
    settings, keys = published_tenants
    with TestClient(create_app(settings)) as client:
        for tenant in ["t0", "t1", "t2"] * 3:
            response = client.get("/v1/items/i1/similar", params={"k": 3},
                                  headers={"Authorization": f"Bearer {keys[tenant]}"})
            assert response.status_code == 200, response.text
            assert all(item["title"].startswith(tenant) for item in response.json()["items"])
            assert set(client.app.state.indexes.loaded()) == {tenant}


# -- the change sensor at many tenants ------------------------------------------------------------

def test_the_arango_adapter_reads_every_tenants_watermark_in_one_settled_query():
    from lodestar.cdp.arango import ArangoCdpStore
    from tests.test_cdp_arango_unit import Cursor, Database

    db = Database(results=[Cursor([{"tenant": "acme", "updated_at": 12.5, "key": "k9"},
                                   {"tenant": "zeta", "updated_at": 11.0, "key": "k1"}])])
    marks = ArangoCdpStore(db, settle_s=2.0).latest_watermarks("events")
    assert marks == {"acme": Watermark(12.5, "k9"), "zeta": Watermark(11.0, "k1")}
    (query, bind, _), = db.queries
    assert bind == {"@collection": "events", "settle": 2.0}
    assert "DATE_NOW() / 1000 - @settle" in query and "t.deleted != true" in query
    # Per tenant two seeks in the [tenant_id, updated_at] index, the greatest _key breaking a tie.
    assert "SORT d.updated_at DESC" in query and "d.updated_at == newest" in query and "SORT d._key DESC" in query
    with pytest.raises(InvalidInput):
        ArangoCdpStore(db).latest_watermarks("orders")
    assert len(db.queries) == 1


def test_a_tick_without_change_at_1000_tenants_is_measured(tmp_path, monkeypatch):
    """Prints the time of a no-change tick of ``cdp_changes`` at 1,000 tenants (each with items,
    users and events), both while it still waits on every tenant's run and once they are done; the
    only assertions are on what it asks of the stores."""
    import json

    from dagster import DagsterInstance

    from assets.partitions import TENANTS
    from lodestar.records import parse_event, parse_item, parse_user
    from tests.test_sensors import TickCost, _context, cdp_changes

    settings = Settings(data_dir=tmp_path / "var")
    names = [f"t{k:04d}" for k in range(1000)]
    items = [parse_item({"id": f"i{k}", "title": f"item {k}"}) for k in range(20)]
    users = [parse_user({"id": f"u{k}"}) for k in range(5)]
    events = [parse_event({"user_id": f"u{k % 5}", "item_id": f"i{k % 20}", "type": "view", "ts": 1_700_000_000 + k})
              for k in range(50)]
    with cdp_session(settings) as store:
        store._conn().execute("PRAGMA synchronous=OFF")  # a bulk load for a measurement: no fsync per tenant
        for name in names:
            store.create_tenant(name)
            store.upsert_items(name, items)
            store.upsert_users(name, users)
            store.append_events(name, events)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TENANTS, names)
        first = cdp_changes(_context(instance, settings))
        assert len(first.run_requests) == 1000
        settled = json.dumps({t: {k: v for k, v in s.items() if k != "run_key"}
                              for t, s in json.loads(first.cursor).items()})

        def timed(cursor: str) -> float:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                result = cdp_changes(_context(instance, settings, cursor))
                times.append(time.perf_counter() - started)
                assert result.run_requests == []
            return statistics.median(times) * 1000

        waiting_ms, settled_ms = timed(first.cursor), timed(settled)
        cost = TickCost(monkeypatch, instance)
        _, waiting_cost = cost.tick(instance, settings, first.cursor)
        _, settled_cost = cost.tick(instance, settings, settled)
    assert waiting_cost == ({"latest_watermarks": 3}, 3, 2)  # 1,000 run keys: two lookups of 500
    assert settled_cost == ({"latest_watermarks": 3}, 3, 0)
    print(f"\ncdp_changes, no change, 1,000 tenants (median of 5): {settled_ms:.1f} ms with every run done, "
          f"{waiting_ms:.1f} ms while waiting on 1,000 runs")
