"""Advertisers' webhooks against a real local HTTP receiver: the signature verifies, a 500 is
retried with backoff and every attempt logged, a retry carries the same event id, an event is
queued once, a webhook failing for a day is disabled and the report says so; the API shows an
advertiser its own webhooks only and their secret once."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from litestar.testing import TestClient

from lodestar.ads import alerts as ads_alerts
from lodestar.ads import campaigns, notify
from lodestar.cdp import cdp_session
from lodestar.keys import issue_key
from lodestar.records import parse_item
from serving.app import create_app
from tests.helpers import app_settings_with, bearer, free_port

DAY = 86400


class Receiver:
    """An HTTP endpoint that answers 500 to the first ``failures`` requests, then 200."""

    def __init__(self, failures: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server interface
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                self.send_response(500 if len(outer.requests) <= outer.failures else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(autouse=True)
def local_receivers(monkeypatch):
    """The receivers of these tests listen on 127.0.0.1, which webhooks may not reach by default."""
    monkeypatch.setenv("LODESTAR_WEBHOOKS_ALLOW_PRIVATE", "1")


@pytest.fixture()
def shop(tmp_path):
    settings = app_settings_with(tmp_path, "shop")
    with cdp_session(settings) as store:
        store.upsert_items("shop", [parse_item({"id": i, "title": f"item {i}"}) for i in ("p1", "p2")])
        admin = issue_key(store, "shop")
        advertiser, key = campaigns.create_advertiser(store, "shop", "Kestrel", "test")
        campaigns.create_line_item(store, "shop", advertiser["id"], {
            "id": "fall", "products": ["p1"], "bid": "1.00", "daily_budget": "10", "total_budget": "100"}, "test")
    yield settings, admin, key, advertiser["id"]


def spend(store, amount_micros: int, day: str, n: int = 0) -> None:
    store.charge_click("shop", {"ad_id": f"a{day}{n}", "line_item": "fall", "advertiser": "kestrel", "product": "p1",
                                "user_id": f"u{n}", "price": amount_micros, "day": day, "ts": 1.0}, 10_000_000,
                       100_000_000)


def test_a_budget_event_is_signed_retried_with_the_same_id_and_delivered_once(shop):
    settings, _, _, advertiser = shop
    receiver = Receiver(failures=2)
    try:
        with cdp_session(settings) as store:
            hook, secret = notify.register(store, "shop", advertiser, {"url": receiver.url, "events": ["budget.80"]},
                                           "test")
            now = 1_800_000_000.0
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            spend(store, 8_500_000, day)  # 85% of the day's 10
            assert notify.queue_new(store, "shop", now) == 1
            assert notify.queue_new(store, "shop", now + 5) == 0  # the same happening: one event
            assert notify.deliver_due(store, now, notify.http_post) == {"delivered": 0, "retried": 1, "failed": 0}
            assert notify.deliver_due(store, now + 10, notify.http_post) == {"delivered": 0, "retried": 0, "failed": 0}
            assert notify.deliver_due(store, now + 30, notify.http_post)["retried"] == 1  # after 30 s
            assert notify.deliver_due(store, now + 30 + 59, notify.http_post)["retried"] == 0  # then 60 s
            assert notify.deliver_due(store, now + 30 + 60, notify.http_post)["delivered"] == 1
            assert notify.deliver_due(store, now + 10_000, notify.http_post) == {"delivered": 0, "retried": 0,
                                                                                  "failed": 0}
            (note,) = store.list_notifications("shop", hook["id"])
            assert note["status"] == "delivered" and [a.get("status_code") for a in note["attempts"]] == [500, 500, 200]
            assert notify.queue_new(store, "shop", now + DAY) == 0  # the day is over: no new spend, no event
        ids = {headers["Lodestar-Event-Id"] for headers, _ in receiver.requests}
        bodies = {body for _, body in receiver.requests}
        assert len(receiver.requests) == 3 and len(ids) == 1 and len(bodies) == 1  # a retry is the same event
        headers, body = receiver.requests[-1]
        sent = time.time()  # signed as it left, by the wall clock
        assert notify.verify(secret, headers["Lodestar-Signature"], body, now=sent)
        assert not notify.verify(secret, headers["Lodestar-Signature"], body + b" ", now=sent)  # altered
        assert not notify.verify("whsec_other", headers["Lodestar-Signature"], body, now=sent)
        assert not notify.verify(secret, headers["Lodestar-Signature"], body, now=sent + 3600)  # a replay
        event = json.loads(body)
        assert event["id"] == headers["Lodestar-Event-Id"] and event["type"] == "budget.80"
        assert event["data"]["line_item"] == "fall" and event["data"]["spent_today"] == 8.5
    finally:
        receiver.close()


def test_a_webhook_failing_for_a_day_is_disabled_and_the_report_says_so(shop):
    settings, admin, key, advertiser = shop
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    with cdp_session(settings) as store:
        hook, _ = notify.register(store, "shop", advertiser, {"url": dead}, "test")
        now = 1_800_000_000.0
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        spend(store, 9_500_000, day)
        assert notify.queue_new(store, "shop", now) >= 2  # 80% and 100% of the day (what is left pays no click)
        t, retried = now, 0
        while store.get_webhook("shop", hook["id"])["status"] == "active" and t < now + 3 * DAY:
            retried += notify.deliver_due(store, t, notify.http_post)["retried"]
            t += 600
        assert store.get_webhook("shop", hook["id"])["status"] == "disabled" and now + DAY <= t <= now + DAY + 3600
        assert retried > 10
        notes = store.list_notifications("shop", hook["id"])
        assert all(n["status"] == "failed" for n in notes) and "ConnectError" in notes[0]["attempts"][0]["error"]
    with TestClient(create_app(settings)) as client:
        report = client.get("/v1/ads/report", headers=bearer(key)).json()
        assert report["webhooks_disabled"][0]["id"] == hook["id"]
        assert "failed for a day" in report["webhooks_disabled"][0]["disabled_reason"]


def test_the_api_shows_an_advertiser_its_own_webhooks_and_the_secret_once(shop):
    settings, admin, key, advertiser = shop
    with TestClient(create_app(settings)) as client:
        made = client.post("/v1/ads/webhooks", json={"url": "https://example.com/hooks", "roas_below": 2.5},
                           headers=bearer(key))
        assert made.status_code == 201, made.text
        secret, hook = made.json()["secret"], made.json()["webhook"]
        assert secret.startswith("whsec_") and "secret" not in hook and hook["roas_below"] == 2.5
        listed = client.get("/v1/ads/webhooks", headers=bearer(key)).json()["webhooks"]
        assert [w["id"] for w in listed] == [hook["id"]] and secret not in json.dumps(listed)
        for bad, field in (({"url": "ftp://x"}, "url"), ({"url": "https://x", "events": ["nope"]}, "events"),
                           ({"url": "https://x", "roas_below": -1}, "roas_below")):
            refused = client.post("/v1/ads/webhooks", json=bad, headers=bearer(key))
            assert refused.status_code == 422 and field in refused.text
        other = client.post("/v1/advertisers", json={"name": "Acme"}, headers=bearer(admin)).json()["api_key"]
        assert client.get("/v1/ads/webhooks", headers=bearer(other)).json() == {"webhooks": []}
        assert client.get(f"/v1/ads/webhooks/{hook['id']}/deliveries", headers=bearer(other)).status_code == 404
        assert client.delete(f"/v1/ads/webhooks/{hook['id']}", headers=bearer(other)).status_code == 404
        assert client.get(f"/v1/ads/webhooks/{hook['id']}/deliveries", headers=bearer(key)).json() == {
            "deliveries": []}
        assert client.post("/v1/ads/webhooks", json={"url": "https://x"}, headers=bearer(admin)).status_code == 403
        assert client.delete(f"/v1/ads/webhooks/{hook['id']}", headers=bearer(key)).json()["status"] == "deleted"
        assert client.get("/v1/ads/webhooks", headers=bearer(key)).json() == {"webhooks": []}


def test_the_sensor_queues_and_delivers(shop):
    from dagster import build_sensor_context

    from assets.resources import LodestarResource
    from pipelines.sensors import send_ads_notifications

    settings, _, _, advertiser = shop
    receiver = Receiver()
    try:
        with cdp_session(settings) as store:
            notify.register(store, "shop", advertiser, {"url": receiver.url, "events": ["budget.80"]}, "test")
            spend(store, 8_000_000, time.strftime("%Y-%m-%d", time.gmtime()))
        result = send_ads_notifications(build_sensor_context(), LodestarResource(data_dir=str(settings.data_dir)))
        assert "1 events queued; 1 delivered" in result.skip_message
        assert len(receiver.requests) == 1 and json.loads(receiver.requests[0][1])["type"] == "budget.80"
        again = send_ads_notifications(build_sensor_context(), LodestarResource(data_dir=str(settings.data_dir)))
        assert "0 events queued; 0 delivered" in again.skip_message and len(receiver.requests) == 1
    finally:
        receiver.close()


def test_an_advertiser_key_reaches_no_route_of_the_shop_and_no_other_advertisers_data(shop):
    """Over every route the API has: an advertiser's key gets 403 outside /v1/ads, and inside it sees
    only its own line items, report rows, incrementality, webhooks and their deliveries."""
    import re

    from litestar.routes import HTTPRoute

    settings, admin, key, advertiser = shop
    with TestClient(create_app(settings)) as client:
        other = client.post("/v1/advertisers", json={"name": "Acme"}, headers=bearer(admin)).json()["api_key"]
        hook = client.post("/v1/ads/webhooks", json={"url": "https://example.com/h"}, headers=bearer(key)).json()
        client.app.state.cdp.put_report("shop", "ads", [{"day": "2026-11-20", "advertiser": advertiser,
                                                         "line_item": "fall", "spend": 1.0}])
        client.app.state.cdp.put_report("shop", "ads_incrementality", [{"advertiser": advertiser,
                                                                        "campaign": "fall"}])
        checked = 0
        for route in client.app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            path = re.sub(r"\{[^}]+\}", "x1", route.path)
            if not path.startswith("/v1/") or path.startswith("/v1/ads"):
                continue
            for method in sorted(set(route.methods) - {"HEAD", "OPTIONS"}):
                answer = client.request(method, path, headers=bearer(other), json={})
                assert answer.status_code == 403, (method, path, answer.status_code)
                checked += 1
        assert checked >= 30  # every tenant and operator route, each method
        mine = bearer(key)
        theirs = bearer(other)
        assert [li["id"] for li in client.get("/v1/ads/line-items", headers=mine).json()["line_items"]] == ["fall"]
        assert client.get("/v1/ads/line-items", headers=theirs).json() == {"line_items": []}
        assert client.get("/v1/ads/line-items/fall", headers=theirs).status_code == 404
        assert client.post("/v1/ads/line-items/fall/status", json={"status": "paused"}, headers=theirs).status_code == 404
        assert client.get("/v1/ads/report", headers=mine).json()["rows"] and client.get(
            "/v1/ads/report", headers=mine).json()["incrementality"]
        assert client.get("/v1/ads/report", headers=theirs).json()["rows"] == []
        assert client.get("/v1/ads/report", headers=theirs).json()["incrementality"] == []
        assert client.get("/v1/ads/report.csv", headers=theirs).text.count("\n") == 1  # the header alone
        assert client.get("/v1/ads/webhooks", headers=theirs).json() == {"webhooks": []}
        hook_id = hook["webhook"]["id"]
        assert client.get(f"/v1/ads/webhooks/{hook_id}/deliveries", headers=theirs).status_code == 404
        assert client.delete(f"/v1/ads/webhooks/{hook_id}", headers=theirs).status_code == 404
        assert "members" not in client.get("/v1/ads/segments", headers=theirs).text


def test_a_campaign_ends_when_its_last_line_item_does(shop):
    settings, _, _, advertiser = shop
    with cdp_session(settings) as store:
        now = time.time()
        for ident, end in (("a", now + 100), ("b", now + 200)):
            campaigns.create_line_item(store, "shop", advertiser, {
                "id": ident, "campaign": "winter", "products": ["p2"], "bid": "1", "daily_budget": "5",
                "total_budget": "5", "end": end}, "test")

        def kinds(at):
            return sorted((e["type"], e["data"].get("campaign"), e["data"].get("line_item"))
                          for e in notify.happenings(store, "shop", advertiser, at) if e["type"].endswith("ended"))

        assert kinds(now + 50) == []
        assert kinds(now + 150) == [("line_item.ended", "winter", "a")]
        assert kinds(now + 250) == [("campaign.ended", "winter", None), ("line_item.ended", "winter", "a"),
                                    ("line_item.ended", "winter", "b")]



def test_webhooks_may_not_reach_the_shops_own_network(shop, monkeypatch):
    monkeypatch.delenv("LODESTAR_WEBHOOKS_ALLOW_PRIVATE")
    settings, _, key, advertiser = shop
    with TestClient(create_app(settings)) as client:
        for url in ("http://127.0.0.1:8529/_api", "http://169.254.169.254/latest/meta-data", "http://10.0.0.5/",
                    "http://[::1]:9000/", "http://localhost:3000/"):
            refused = client.post("/v1/ads/webhooks", json={"url": url}, headers=bearer(key))
            assert refused.status_code == 422 and "private, loopback or link-local" in refused.text, url
    with cdp_session(settings) as store:  # registered while allowed, sent while not: refused at the send
        monkeypatch.setenv("LODESTAR_WEBHOOKS_ALLOW_PRIVATE", "1")
        hook, _ = notify.register(store, "shop", advertiser, {"url": "http://127.0.0.1:9/x"}, "test")
        monkeypatch.delenv("LODESTAR_WEBHOOKS_ALLOW_PRIVATE")
        store.enqueue_notifications("shop", [{"webhook_id": hook["id"], "event_id": "e1", "type": "budget.80",
                                               "payload": {}, "created_at": 1.0}])
        calls = []
        assert notify.deliver_due(store, 2.0, lambda *a: calls.append(a) or 200)["retried"] == 1 and calls == []
        (note,) = store.list_notifications("shop", hook["id"])
        assert "private, loopback or link-local" in note["attempts"][0]["error"]


def test_alerts_in_the_inbox_for_the_advertiser_and_the_shop_with_read_marks(shop):
    import re

    from lodestar.accounts import add_member, ensure_account

    settings, admin, key, advertiser = shop
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/ads/alerts", headers=bearer(key)).json()["unread"] >= 0
        with cdp_session(settings) as store:
            spend(store, 8_500_000, day)
        inbox = client.get("/v1/ads/alerts", headers=bearer(key)).json()
        kinds = {a["type"] for a in inbox["alerts"]}
        assert "budget.80" in kinds and inbox["unread"] == len(inbox["alerts"])
        with cdp_session(settings) as store:
            spend(store, 1_000_000, day, n=1)  # 9.50 of 10: less than the 1.00 bid left today
        kinds = {a["type"]: a for a in client.get("/v1/ads/alerts", headers=bearer(key)).json()["alerts"]}
        assert {"budget.100", "stopped_serving"} <= set(kinds)
        assert "today's budget is spent" in kinds["stopped_serving"]["message"]
        assert client.post("/v1/ads/alerts/read", json={"all": True}, headers=bearer(key)).json()["marked"] >= 3
        assert client.get("/v1/ads/alerts", headers=bearer(key)).json()["unread"] == 0
        other = client.post("/v1/advertisers", json={"name": "Acme"}, headers=bearer(admin)).json()["api_key"]
        assert client.get("/v1/ads/alerts", headers=bearer(other)).json() == {"unread": 0, "alerts": []}
        # The shop's console inbox: every advertiser's alerts, its own read marks.
        with cdp_session(settings) as store:
            ensure_account(store, "ann@shop.test", "correct horse battery staple", "test")
            add_member(store, "shop", "ann@shop.test", "editor", "test")
        page = client.get("/console/signin")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        client.post("/console/signin", data={"_csrf_token": csrf, "email": "ann@shop.test",
                                             "password": "correct horse battery staple", "next": "/console/"})
        inbox_page = client.get("/console/t/shop/alerts")
        assert inbox_page.status_code == 200 and "stopped serving" in inbox_page.text
        unread = int(re.search(r"<small>(\d+) unread</small>", inbox_page.text).group(1))
        assert unread >= 3  # the advertiser's read marks are its own
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', inbox_page.text).group(1)
        client.post("/console/t/shop/alerts/read", data={"_csrf_token": csrf})
        assert "<small>0 unread</small>" in client.get("/console/t/shop/alerts").text


def test_an_advertiser_signs_in_to_the_console_with_its_key_and_sees_its_own_page_only(shop):
    import re

    settings, admin, key, advertiser = shop
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with TestClient(create_app(settings)) as client:
        with cdp_session(settings) as store:
            spend(store, 8_500_000, day)
        other = client.post("/v1/advertisers", json={"name": "Acme"}, headers=bearer(admin)).json()["api_key"]

        def sign_in(secret):
            page = client.get("/console/signin")
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
            return client.post("/console/signin", data={"_csrf_token": csrf, "advertiser_key": secret,
                                                        "next": "/console/"}, follow_redirects=False)

        assert sign_in(admin).status_code == 401  # a tenant key is no advertiser's
        signed = sign_in(key)
        assert signed.status_code == 303 and signed.headers["location"] == "/console/ads"
        page = client.get("/console/ads")
        assert page.status_code == 200 and "Kestrel" in page.text and "<code>fall</code>" in page.text
        assert "spent 80% of its daily budget" in page.text
        assert int(re.search(r"<small>(\d+) unread</small>", page.text).group(1)) >= 1
        for path in ("/console/t/shop", "/console/t/shop/users", "/console/t/shop/ads", "/console/tenants"):
            assert client.get(path, follow_redirects=False).status_code == 403, path
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        client.post("/console/ads/alerts/read", data={"_csrf_token": csrf})
        assert "0 unread" in client.get("/console/ads").text
        client.post("/console/signout", data={"_csrf_token": csrf})
        sign_in(other)
        theirs = client.get("/console/ads").text
        assert "Acme" in theirs and "<code>fall</code>" not in theirs  # another advertiser's own page
        # A revoked key ends the session.
        key_id = [k for k in client.get("/v1/keys", headers=bearer(admin)).json()["keys"]
                  if k["label"] == "advertiser acme"][0]["key_id"]
        assert client.delete(f"/v1/keys/{key_id}", headers=bearer(admin)).status_code == 200
        assert client.get("/console/ads", follow_redirects=False).status_code in (302, 303)


def test_a_goal_line_item_missing_its_target_raises_an_alert(shop):
    settings, admin, key, advertiser = shop
    with cdp_session(settings) as store:
        campaigns.create_line_item(store, "shop", advertiser, {
            "id": "roas", "products": ["p2"], "daily_budget": "50", "total_budget": "500",
            "goal": {"type": "target_roas", "target": 4, "max_bid": "1.00"}}, "test")
        store.put_report("shop", "ads", [{"day": "2026-11-20", "advertiser": advertiser, "line_item": "roas",
                                          "spend": 30.0, "conversions": 2, "revenue": 40.0}])
        found = {a["type"]: a for a in ads_alerts.alerts(store, "shop", advertiser)}
        assert "goal_missed" in found and "ROAS 1.33 against a target of 4" in found["goal_missed"]["message"]
        store.put_report("shop", "ads", [{"day": "2026-11-20", "advertiser": advertiser, "line_item": "roas",
                                          "spend": 30.0, "conversions": 6, "revenue": 110.0}])
        assert "goal_missed" not in {a["type"] for a in ads_alerts.alerts(store, "shop", advertiser)}
