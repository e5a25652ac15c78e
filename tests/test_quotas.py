"""Quotas: per-key and per-tenant request rates, events per day and catalog size, set by the
operator; past one, 429 with Retry-After (nothing of the request done) or, for items, a reject."""

from __future__ import annotations

import json
import time

import pytest
from litestar.testing import TestClient

from lodestar.cdp import cdp_session
from lodestar.errors import InvalidInput
from lodestar.importer import import_files
from lodestar.keys import issue_key
from serving.app import create_app
from serving.quotas import RequestRates
from tests.helpers import OPERATOR_KEY, app_settings_with, bearer


@pytest.fixture()
def app_settings(tmp_path):
    return app_settings_with(tmp_path, "acme", "zeta")


_bearer = bearer


def _set(client: TestClient, tenant: str, **quotas) -> dict:
    response = client.put(f"/v1/operator/tenants/{tenant}/quotas", json=quotas, headers=_bearer(OPERATOR_KEY))
    assert response.status_code == 200, response.text
    return response.json()


def _event(user: str = "u1") -> dict:
    return {"user_id": user, "item_id": "i1", "type": "view", "ts": time.time() - 5}


def test_the_operator_sets_quotas_and_nobody_else_can(app_settings):
    with cdp_session(app_settings) as store:
        admin = issue_key(store, "acme", ("admin",))
    with TestClient(create_app(app_settings)) as client:
        op = _bearer(OPERATOR_KEY)
        assert client.get("/v1/operator/tenants/acme/quotas", headers=op).json() == {
            "requests_per_second": 0.0, "key_requests_per_second": 0.0, "concurrent_requests": 0,
            "events_per_day": 0, "items": 0}
        assert _set(client, "acme", requests_per_second=20, items=500)["requests_per_second"] == 20
        kept = _set(client, "acme", events_per_day=1000)  # the fields not sent stay
        assert (kept["requests_per_second"], kept["items"], kept["events_per_day"]) == (20, 500, 1000)
        bad = client.put("/v1/operator/tenants/acme/quotas", json={"items": -1}, headers=op)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "items"
        unknown = client.put("/v1/operator/tenants/acme/quotas", json={"cpu": 2}, headers=op)
        assert unknown.status_code == 422
        assert client.put("/v1/operator/tenants/ghost/quotas", json={"items": 1}, headers=op).status_code == 404
        denied = client.put("/v1/operator/tenants/acme/quotas", json={"items": 10**9}, headers=_bearer(admin))
        assert denied.status_code == 403  # a tenant's own admin key does not raise its quotas
    with cdp_session(app_settings) as store:  # stored with the configuration, where the CLI shows it
        assert store.get_tenant("acme")["config"]["quotas"] == {"requests_per_second": 20, "items": 500,
                                                               "events_per_day": 1000}


def test_a_key_past_its_rate_gets_429_with_retry_after_and_other_keys_and_tenants_do_not(app_settings):
    with cdp_session(app_settings) as store:
        flood, calm, other = (issue_key(store, t, ("events",)) for t in ("acme", "acme", "zeta"))
    with TestClient(create_app(app_settings)) as client:
        _set(client, "acme", key_requests_per_second=5, requests_per_second=8)
        answers = [client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(flood)) for _ in range(7)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
        refused = answers[-1]
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["quota"] == "key_rate" and "5 requests per second" in body["detail"]
        assert refused.headers["content-type"].startswith("application/problem+json")
        # Another key of the tenant has its own key rate, but the tenant's rate (8/s) is shared.
        calm_codes = [client.post("/v1/events", json={"events": [_event("u2")]}, headers=_bearer(calm)).status_code
                      for _ in range(4)]
        assert calm_codes == [200, 200, 200, 429]
        assert client.post("/v1/events", json={"events": [_event("u3")]},
                           headers=_bearer(calm)).json()["quota"] == "tenant_rate"
        # Another tenant is not limited at all; public routes never are.
        assert all(client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(other)).status_code == 200
                   for _ in range(12))
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics", headers=_bearer(OPERATOR_KEY)).text
        assert 'lodestar_requests_throttled_total{quota="key_rate"} 2.0' in metrics
    with cdp_session(app_settings) as store:  # refused requests stored nothing
        assert store.count("acme", "events") == 5 + 3
        assert len(store.user_events("acme", "u1")) == 5


def test_events_past_the_daily_quota_are_refused_whole(app_settings):
    with cdp_session(app_settings) as store:
        key = issue_key(store, "acme", ("events",))
    with TestClient(create_app(app_settings)) as client:
        _set(client, "acme", events_per_day=5)
        batch = {"events": [_event(f"u{n}") for n in range(3)]}
        assert client.post("/v1/events", json=batch, headers=_bearer(key)).json()["stored"] == 3
        refused = client.post("/v1/events", json=batch, headers=_bearer(key))  # 3 + 3 > 5
        assert refused.status_code == 429 and refused.json()["quota"] == "events_per_day"
        assert "3 of its 5 events for today" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 86400  # until UTC midnight
        two = {"events": [_event("u7"), _event("u8")]}
        assert client.post("/v1/events", json=two, headers=_bearer(key)).json()["stored"] == 2  # exactly fills it
        assert client.post("/v1/events", json={"events": [_event("u9")]}, headers=_bearer(key)).status_code == 429
    with cdp_session(app_settings) as store:
        assert store.count("acme", "events") == 5  # nothing of a refused batch was stored


def test_an_import_stops_adding_items_at_the_quota_and_still_updates_existing_ones(app_settings, tmp_path):
    with cdp_session(app_settings) as store:
        store.set_tenant_config("acme", {"quotas": {"items": 3}})
        first = tmp_path / "a.jsonl"
        first.write_text("\n".join(json.dumps({"id": f"i{n}", "title": f"item {n}"}) for n in range(2)))
        assert import_files(store, app_settings, "acme", {"items": first}).entities[0].accepted == 2
        second = tmp_path / "b.jsonl"
        rows = [{"id": "i0", "title": "item 0, renamed"}] + [{"id": f"i{n}", "title": f"item {n}"} for n in (2, 3, 4)]
        second.write_text("\n".join(json.dumps(r) for r in rows))
        summary = import_files(store, app_settings, "acme", {"items": second}).entities[0]
        assert (summary.accepted, summary.rejected) == (2, 2)  # the update and one new item fit
        assert store.get_item("acme", "i0")["title"] == "item 0, renamed" and store.count("acme", "items") == 3
        rejects = [json.loads(line) for line in open(summary.reject_file)]
        assert [(r["line"], r["row"]["id"]) for r in rejects] == [(3, "i3"), (4, "i4")]
        assert "quota of 3 items" in rejects[0]["reason"]
        zeta = tmp_path / "z.jsonl"
        zeta.write_text("\n".join(json.dumps({"id": f"i{n}", "title": "x"}) for n in range(5)))
        assert import_files(store, app_settings, "zeta", {"items": zeta}).entities[0].accepted == 5  # no quota


def test_rates_are_shared_out_over_workers_and_a_bad_storage_says_which_variable():
    from lodestar.keys import Principal
    from lodestar.tenant_config import QuotaSettings

    rates = RequestRates.from_env({"LODESTAR_WORKERS": "2"})
    principal = Principal("tenant_key", "acme", ("read",), "k1")
    admitted = 0
    for _ in range(10):
        try:
            rates.admit(principal, QuotaSettings(requests_per_second=6))
            admitted += 1
        except Exception:  # noqa: BLE001 - QuotaExceeded, counted below
            break
    assert admitted == 3  # this worker's half of 6 per second
    with pytest.raises(InvalidInput, match="LODESTAR_RATE_LIMIT_STORAGE"):
        RequestRates.from_env({"LODESTAR_RATE_LIMIT_STORAGE": "nosuch://x"})


def test_a_refused_key_is_refused_early_until_its_window_frees(app_settings, monkeypatch):
    """After a refusal the same credential is answered before routing and the key lookup, with the
    same 429, until the moving window frees; then it is admitted again. Only the first early
    refusal of a window writes a log line."""
    import serving.limits

    logged = []
    monkeypatch.setattr(serving.limits, "log_request", lambda scope, status, *a, **extra: logged.append((status, extra)))
    with cdp_session(app_settings) as store:
        key = issue_key(store, "acme", ("events",))
    with TestClient(create_app(app_settings)) as client:
        _set(client, "acme", key_requests_per_second=2)
        lookups = []
        cdp = client.app.state.cdp
        find = cdp.find_api_key
        cdp.find_api_key = lambda key_id: lookups.append(key_id) or find(key_id)
        answers = [client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429] and len(lookups) == 3
        early = [client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key)) for _ in range(3)]
        assert [a.status_code for a in early] == [429] * 3 and len(lookups) == 3  # no lookup, no work
        assert early[0].json()["quota"] == "key_rate" and int(early[0].headers["Retry-After"]) >= 1
        assert early[0].json()["detail"] == answers[2].json()["detail"]
        assert early[0].headers["content-type"] == "application/problem+json"
        assert len({a.headers["x-request-id"] for a in early}) == 3  # each its own id
        assert len(logged) == 1 and logged[0][0] == 429 and "not logged" in logged[0][1]["early_refusal"]
        assert "connection" not in early[0].headers  # the connection carries the client's next request
        waiting = client.post("/v1/events", json={"events": [_event()]},
                              headers={**_bearer(key), "Expect": "100-continue"})
        assert waiting.status_code == 429 and waiting.headers["connection"] == "close"  # its body may yet come
        wrong = client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key + "x"))
        assert wrong.status_code == 401  # another credential is not refused early: it is checked
        time.sleep(1.05)  # the window frees
        assert client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key)).status_code == 200
    with cdp_session(app_settings) as store:
        assert store.count("acme", "events") == 3  # nothing refused was stored


def test_a_tenant_past_its_concurrency_quota_gets_429_and_a_finished_request_gives_its_slot_back(app_settings):
    from lodestar.keys import Principal
    from lodestar.tenant_config import QuotaSettings

    rates = RequestRates.from_env({})
    acme, zeta = (Principal("tenant_key", t, ("read",), f"k-{t}") for t in ("acme", "zeta"))
    two = QuotaSettings(concurrent_requests=2)
    assert rates.admit(acme, two) == "acme" and rates.admit(acme, two) == "acme"
    with pytest.raises(Exception, match="already has 2 requests in flight") as refused:
        rates.admit(acme, two)
    assert refused.value.quota == "tenant_concurrency" and refused.value.retry_after_s == 1
    assert rates.admit(zeta, two) == "zeta"  # another tenant has its own
    rates.finished("acme")
    assert rates.admit(acme, two) == "acme"  # a slot came back
    assert rates.admit(acme, QuotaSettings()) is None  # no concurrency quota: nothing held
    halves = RequestRates.from_env({"LODESTAR_WORKERS": "2"})
    halves.admit(acme, QuotaSettings(concurrent_requests=3))
    with pytest.raises(Exception, match="already has 1 requests in flight"):
        halves.admit(acme, QuotaSettings(concurrent_requests=3))  # this worker's share of 3 over 2
    # Over HTTP every request gives its slot back when it is done, refused or not.
    with cdp_session(app_settings) as store:
        key = issue_key(store, "acme", ("events",))
    with TestClient(create_app(app_settings)) as client:
        _set(client, "acme", concurrent_requests=1)
        codes = [client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key)).status_code
                 for _ in range(5)]
        codes.append(client.post("/v1/events", json={"events": "nope"}, headers=_bearer(key)).status_code)
        codes.append(client.post("/v1/events", json={"events": [_event()]}, headers=_bearer(key)).status_code)
        assert codes == [200] * 5 + [422, 200]
        assert client.app.state.rates._in_flight == {}


def test_concurrency_slots_stay_exact_when_threads_admit_and_the_loop_gives_back():
    """The guard admits from worker threads while requests give slots back on the event loop: no
    slot is lost or doubled, and no more than the quota are ever held at once."""
    import sys
    import threading

    from lodestar.keys import Principal
    from lodestar.tenant_config import QuotaSettings

    rates = RequestRates.from_env({})
    principal, quota = Principal("tenant_key", "acme", ("read",), "k1"), QuotaSettings(concurrent_requests=3)
    held_max, lock, held = [0], threading.Lock(), [0]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def worker() -> None:
        for _ in range(2000):
            try:
                rates.admit(principal, quota)
            except Exception:  # noqa: BLE001 - refused: the quota is full
                continue
            with lock:
                held[0] += 1
                held_max[0] = max(held_max[0], held[0])
                held[0] -= 1
            rates.finished("acme")

    try:
        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert rates._in_flight == {} and held_max[0] <= 3


def test_a_concurrency_refusal_answers_early_only_while_the_tenant_is_at_its_limit():
    """After a concurrency refusal, the same credential is refused early (before routing and the key
    lookup) while the tenant still has its quota of requests in flight, and not once one finishes."""
    from lodestar.errors import QuotaExceeded
    from lodestar.keys import Principal
    from lodestar.tenant_config import QuotaSettings

    rates = RequestRates.from_env({})
    principal, quota = Principal("tenant_key", "acme", ("read",), "k1"), QuotaSettings(concurrent_requests=1)
    assert rates.admit(principal, quota, "Bearer k1") == "acme"  # one in flight: the quota
    with pytest.raises(QuotaExceeded):
        rates.admit(principal, quota, "Bearer k1")
    early = rates.refused("Bearer k1")
    assert early is not None and early[0].quota == "tenant_concurrency" and early[1]  # the first: logged
    again = rates.refused("Bearer k1")
    assert again is not None and not again[1]  # the rest of this refusal's window: counted, not logged
    assert rates.refused("Bearer other-key") is None  # only the credential that was refused
    rates.finished("acme")
    assert rates.refused("Bearer k1") is None  # the slot is free: the guard looks again
    assert rates.admit(principal, quota, "Bearer k1") == "acme"
