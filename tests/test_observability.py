"""What operators see: Prometheus metrics at /metrics (operator key only, so tenant names stay
private), an X-Request-ID on every response, and one JSON log line per request."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lodestar.cdp import cdp_session
from lodestar.index import open_index_store
from lodestar.keys import issue_key
from lodestar.settings import Settings
from serving.app import create_app
from tests.test_limits import running_server

TENANT = "acme-hidden-tenant"
OPERATOR_KEY = "operator-key-for-tests"


@pytest.fixture()
def served(tmp_path: Path) -> tuple[Settings, str]:
    """A data dir with one tenant, its key and a tiny published index (built directly: no pipeline)."""
    settings = Settings(data_dir=tmp_path / "var", embed_model="hashing-64", admin_key=OPERATOR_KEY)
    with cdp_session(settings) as store:
        store.create_tenant(TENANT)
        key = issue_key(store, TENANT)
    index = open_index_store(settings)
    builder = index.build(TENANT, 4)
    builder.upsert(["i1", "i2", "i3"], np.eye(3, 4, dtype=np.float32),
                   [{"item_id": f"i{n}", "title": f"item {n}", "available": True} for n in (1, 2, 3)])
    builder.finish()
    index.publish(TENANT, builder.version)
    return settings, key


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _route(path: str, method: str, status: int) -> frozenset:
    return frozenset({"app_name": "lodestar", "method": method, "path": path, "status_code": str(status)}.items())


def test_metrics_count_requests_by_route_and_status_for_the_operator_only(served):
    settings, key = served
    tenant, operator = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {OPERATOR_KEY}"}
    similar = "/v1/items/{item_id}/similar"
    with TestClient(create_app(settings)) as client:
        before = _samples(client.get("/metrics", headers=operator).text)
        for _ in range(3):
            assert client.get("/v1/items/i1/similar?k=2", headers=tenant).status_code == 200
        assert client.get("/v1/items/nope/similar", headers=tenant).status_code == 404
        assert client.post("/v1/events", headers=tenant,
                           json={"events": [{"user_id": "u1", "item_id": "i1", "type": "view"}]}).status_code == 200

        anonymous, with_tenant_key = client.get("/metrics"), client.get("/metrics", headers=tenant)
        after = client.get("/metrics", headers=operator)

    assert anonymous.status_code == 401 and with_tenant_key.status_code == 403
    for refused in (anonymous, with_tenant_key):
        assert TENANT not in refused.text and "lodestar_" not in refused.text

    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    samples = _samples(after.text)

    def grew(name: str, labels: frozenset) -> float:
        return samples.get((name, labels), 0) - before.get((name, labels), 0)

    assert grew("lodestar_requests_total", _route(similar, "GET", 200)) == 3
    assert grew("lodestar_requests_total", _route(similar, "GET", 404)) == 1
    assert grew("lodestar_request_duration_seconds_count", _route(similar, "GET", 200)) == 3
    assert grew("lodestar_request_duration_seconds_bucket", _route(similar, "GET", 200) | {("le", "+Inf")}) == 3
    assert grew("lodestar_tenant_requests_total", frozenset({"tenant": TENANT, "status_class": "2xx"}.items())) == 4
    assert grew("lodestar_tenant_requests_total", frozenset({"tenant": TENANT, "status_class": "4xx"}.items())) == 1
    assert samples[("lodestar_events_stored", frozenset({"tenant": TENANT}.items()))] == 1
    assert 0 <= samples[("lodestar_index_version_age_seconds", frozenset({"tenant": TENANT}.items()))] < 600


def test_metrics_need_an_operator_key_configured(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "var", embed_model="hashing-64"))) as client:
        answer = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 401 and answer.headers["content-type"].startswith("application/problem+json")


def test_every_response_carries_a_request_id(served):
    settings, key = served
    with TestClient(create_app(settings)) as client:
        echoed = client.get("/health", headers={"X-Request-ID": "req-2026.11:abc_1"})
        assert echoed.headers["x-request-id"] == "req-2026.11:abc_1"
        for insane in ("has space", "x" * 200, "<script>"):
            made = client.get("/health", headers={"X-Request-ID": insane}).headers["x-request-id"]
            assert made != insane and len(made) == 32
        first, second = client.get("/health"), client.get("/health")
        assert first.headers["x-request-id"] != second.headers["x-request-id"]
        # Answers that no handler gives: unauthenticated, unknown path, wrong method.
        for answer in (client.get("/v1/items/i1/similar"), client.get("/no/such/path"), client.delete("/health")):
            assert answer.status_code in (401, 404, 405) and len(answer.headers["x-request-id"]) == 32


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_each_request_writes_one_json_log_line_with_its_request_id(tmp_path):
    with running_server(tmp_path) as server:
        answer = httpx.get(f"{server.url}/v1/items/i1/similar", headers={"X-Request-ID": "trace-me-42"})
        assert answer.status_code == 401
        httpx.get(f"{server.url}/nowhere", headers={"X-Request-ID": "lost-7"})
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every line the logging writes is valid JSON
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)  # the server's own lines too
    mine = [r for r in records if r.get("request_id") == "trace-me-42"]
    assert len(mine) == 1
    line = mine[0]
    assert (line["method"], line["path"], line["route"], line["status"]) == \
        ("GET", "/v1/items/i1/similar", "/v1/items/{item_id}/similar", 401)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["level"] == "info" and line["logger"] == "lodestar.access" and "ts" in line
    unrouted = [r for r in records if r.get("request_id") == "lost-7"]
    assert len(unrouted) == 1 and unrouted[0]["status"] == 404
