"""Sponsored items inside the answers, over the API, on a materialized demo shop: the auction places
ads in the ad-load positions without moving the organic items, prices them at the second price,
clicks are checked and charged once, budgets and frequency caps take line items out, keywords
target search, and retail media off costs nothing."""

from __future__ import annotations

import json
import time

import pytest
from dagster import DagsterInstance, materialize
from litestar.testing import TestClient

from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import cli, demo
from lodestar.ads.money import MICROS
from lodestar.ads.tokens import open_ad_id
from lodestar.cdp import cdp_session
from lodestar.importer import import_files
from lodestar.keys import issue_key
from lodestar.settings import Settings
from pipelines.definitions import all_assets
from serving.app import create_app
from tests.helpers import bearer

MODEL = "hashing-64"
ADS_ON = {"ads": {"enabled": True, "positions": [1, 5], "relevance_floor": 0.0, "reserve": 0.05}}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ads")
    settings = Settings(data_dir=tmp / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("shop")
        key = issue_key(store, "shop")
        import_files(store, settings, "shop", demo.write_demo(tmp / "in", "shop", n_items=120, n_users=60))
        items = {i["id"]: i for batch in store.read_changes("shop", "items") for i in batch}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS, ["shop"])
    resource = LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)
    assert materialize(all_assets(), partition_key="shop", instance=instance, resources={"lodestar": resource}).success
    return settings, key, items


@pytest.fixture()
def client(shop, tmp_path):
    import shutil

    settings, key, items = shop
    copy = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    shutil.copytree(settings.data_dir, copy.data_dir)  # each test changes its own copy of the shop
    with TestClient(create_app(copy)) as test_client:
        test_client.app.state.ads._refresh = 0.0  # see each change at once (in production: within a second)
        yield test_client, key, items


def advertiser(client, key, name) -> str:
    made = client.post("/v1/advertisers", json={"name": name}, headers=bearer(key))
    assert made.status_code == 201, made.text
    return made.json()["api_key"]


def line_item(client, adv_key, **fields) -> dict:
    body = {"daily_budget": "50", "total_budget": "100", "holdout": 0, **fields}
    made = client.post("/v1/ads/line-items", json=body, headers=bearer(adv_key))
    assert made.status_code == 201, made.text
    return made.json()


def opened(client, ad_id):
    """What a served ad id names (only the serving deployment can read it)."""
    return client.app.state.ads.open("shop", ad_id)


def by_category(items, category):
    return sorted(i for i, item in items.items() if category in item["categories"] and item["available"])


def recommendations(client, key, user, **params):
    answer = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, **params}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return answer.json()


def two_advertisers(client, key, items):
    kestrel, acme = advertiser(client, key, "Kestrel"), advertiser(client, key, "Acme Audio")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="kestrel-all", products=products[:60], bid="0.80")
    line_item(client, acme, id="acme-all", products=products[60:], bid="0.40")
    return kestrel, acme


def test_with_retail_media_off_nothing_is_sponsored_and_nothing_is_read(client):
    client, key, items = client
    two_advertisers(client, key, items)
    body = recommendations(client, key, "u0001")
    assert not any(i.get("sponsored") for i in body["items"]) and all("ad_id" not in i for i in body["items"])
    assert client.app.state.ads._states == {}  # no market was built: off costs nothing per request


def test_ads_take_the_ad_load_positions_and_leave_the_organic_order_alone(client):
    client, key, items = client
    two_advertisers(client, key, items)
    users = [f"u{n:04d}" for n in range(0, 40, 3)]
    before = {u: [i["id"] for i in recommendations(client, key, u)["items"]] for u in users}
    assert client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key)).status_code == 200
    served = 0
    for user in users:
        body = recommendations(client, key, user)
        ads = [(n + 1, i) for n, i in enumerate(body["items"]) if i.get("sponsored")]
        organic = [i["id"] for i in body["items"] if not i.get("sponsored")]
        assert len(body["items"]) == 10 and [p for p, _ in ads] == [1, 5][:len(ads)]
        assert organic == before[user][:10 - len(ads)]  # the same items, in the same order, minus the slots
        assert not {i["id"] for _, i in ads} & set(before[user])  # never also an organic item of the list
        for _, ad in ads:
            assert ad["advertiser"] in ("Kestrel", "Acme Audio") and ad["ad_id"].startswith("ad2.")
            served_ad = opened(client, ad["ad_id"])
            bid = {"kestrel-all": 800_000, "acme-all": 400_000}[served_ad.line_item]
            assert 50_000 <= served_ad.price <= bid  # a second price: never above the bid, never below the reserve
        served += len(ads)
    assert served >= len(users)  # every list had at least its first ad slot filled
    ad_ids = [i["ad_id"] for u in users[:3] for i in recommendations(client, key, u)["items"] if i.get("sponsored")]
    assert len(ad_ids) == len(set(ad_ids))  # one id per served ad


def test_the_second_price_is_what_keeps_the_position(client):
    client, key, items = client
    kestrel, acme = advertiser(client, key, "Kestrel"), advertiser(client, key, "Acme Audio")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="high", products=products, bid="2.00")
    line_item(client, acme, id="low", products=products, bid="1.00")
    client.put("/v1/config", json={"config": {"ads": {**ADS_ON["ads"], "positions": [1]}}}, headers=bearer(key))
    body = recommendations(client, key, "u0003", explain="true")
    auction = body["auction"]
    (winner,) = auction["winners"]
    assert winner["line_item"] == "high" and winner["position"] == 1
    runner_up = auction["losers"][0]
    expected = -(-runner_up["bid"] * runner_up["relevance"] // winner["relevance"]) + 10_000
    # The price needed to keep the slot (from the rounded relevances shown: within a micro-cent).
    assert abs(winner["price"] - min(winner["bid"], max(50_000, expected))) <= 200
    assert runner_up["reason"].startswith("outranked") or "product already" in runner_up["reason"]
    assert body["items"][0]["sponsored"] and body["items"][0]["advertiser"] == "Kestrel"


def test_a_click_is_charged_once_and_an_ad_never_served_is_rejected(client, monkeypatch, capsys):
    client, key, items = client
    keys = two_advertisers(client, key, items)
    owner_key = lambda _c, _k, line: keys[0] if line == "kestrel-all" else keys[1]  # noqa: E731
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    ad = next(i for i in recommendations(client, key, "u0002")["items"] if i.get("sponsored"))
    price = opened(client, ad["ad_id"]).price
    click = {"user_id": "u0002", "item_id": ad["id"], "type": "click", "ad_id": ad["ad_id"]}
    first = client.post("/v1/events", json={"events": [click]}, headers=bearer(key))
    assert first.status_code == 200 and first.json()["ad_clicks"] == [{"index": 0, "charged": True, "price": price}]
    again = client.post("/v1/events", json={"events": [{**click, "ts": time.time() - 3 * 86400}]}, headers=bearer(key)).json()
    assert again["ad_clicks"] == [{"index": 0, "charged": False, "reason": "already charged"}]
    for bad in (ad["ad_id"][:-3] + ("AAA" if not ad["ad_id"].endswith("AAA") else "BBB"), ad["ad_id"] + "é"):
        refused = client.post("/v1/events", json={"events": [dict(click, ad_id=bad)]}, headers=bearer(key))
        assert refused.status_code == 422 and "not an ad this shop served" in refused.text
    # A conversion keeps its event whatever its ad id says (the id is dropped, and the answer says so).
    kept = client.post("/v1/events", json={"events": [{"user_id": "u0002", "item_id": ad["id"], "type": "add_to_cart",
                                                       "ad_id": "ad2.made-up"}]}, headers=bearer(key)).json()
    assert kept["stored"] == 1 and kept["notes"][0]["reason"].startswith("stored without its ad_id")
    wrong_item = dict(click, item_id=next(i for i in items if i != ad["id"]))
    assert "the ad was for item" in client.post("/v1/events", json={"events": [wrong_item]},
                                                headers=bearer(key)).text
    charges = client.app.state.cdp.ad_charges("shop")
    assert [(c["ad_id"], c["price"], c["user_id"]) for c in charges] == [(ad["ad_id"], price, "u0002")]
    # A purchase of the clicked item up to an hour later, the same UTC day (the report's rows are per
    # day of the event): the live report attributes it to the click.
    now = time.time()
    later = max(now, min(now + 3600, (now // 86400 + 1) * 86400 - 1))
    purchase = {"user_id": "u0002", "item_id": ad["id"], "type": "purchase", "value": 25.0, "ts": later}
    assert client.post("/v1/events", json={"events": [purchase]}, headers=bearer(key)).status_code == 200
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(client.app.state.settings.data_dir))
    assert cli.main(["advertisers", "report", "--tenant", "shop"]) == 0
    earlier, row = json.loads(capsys.readouterr().out)  # the repeated click was sent with an earlier ts
    line = opened(client, ad["ad_id"]).line_item
    assert (earlier["line_item"], earlier["clicks"], earlier["charged_clicks"], earlier["spend"]) == (line, 1, 0, 0)
    assert (row["line_item"], row["clicks"], row["charged_clicks"], row["conversions"], row["revenue"]) == (
        line, 1, 1, 1, 25.0)
    assert row["spend"] == price / MICROS and row["roas"] == round(25.0 / row["spend"], 4)
    listed = client.get("/v1/ads/line-items", headers=bearer(owner_key(client, key, line))).json()["line_items"]
    assert [(r["id"], r["spent_total"], r["serving"]) for r in listed] == [(line, price, "active")]


def test_a_spent_budget_takes_the_line_item_out_and_never_overspends_by_more_than_one_click(client):
    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="small", products=products, bid="1.00", daily_budget="2.5", total_budget="2.5")
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    charged, users = 0, [f"u{n:04d}" for n in range(40)]
    for user in users:
        ads = [i for i in recommendations(client, key, user)["items"] if i.get("sponsored")]
        for ad in ads:
            answer = client.post("/v1/events", json={"events": [
                {"user_id": user, "item_id": ad["id"], "type": "click", "ad_id": ad["ad_id"]}]}, headers=bearer(key))
            charged += answer.json()["ad_clicks"][0]["charged"]
    spent = client.app.state.cdp.ad_spend_all("shop", "2099-01-01")["small"]["spent_total"]
    assert charged >= 3 and spent <= 2_500_000 + 1_000_000  # within the budget plus one click
    shown = client.get("/v1/ads/line-items/small", headers=bearer(kestrel)).json()
    assert shown["spent_total"] == spent
    after = [i for u in users[:10] for i in recommendations(client, key, u)["items"] if i.get("sponsored")]
    assert after == []  # less than a bid left: out of every auction


def test_frequency_caps_count_the_users_ad_impressions_today(client):
    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="capped", products=products, bid="1.00", frequency_cap={"per_user_per_day": 1})
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    seen = 0
    for _ in range(4):
        ads = [i for i in recommendations(client, key, "u0004")["items"] if i.get("sponsored")]
        impressions = [{"user_id": "u0004", "item_id": a["id"], "type": "impression", "ad_id": a["ad_id"]} for a in ads]
        if impressions:
            assert client.post("/v1/events", json={"events": impressions}, headers=bearer(key)).status_code == 200
        seen += len(ads)
    assert seen == 1  # one ad in the first list (not one per ad slot), then the cap keeps it out all day
    assert any(i.get("sponsored") for i in recommendations(client, key, "u0005")["items"])  # another user


def test_search_keywords_target_exactly_by_phrase_and_never_by_negative(client):
    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    running = by_category(items, "running")
    line_item(client, kestrel, id="phrase", products=running[:10], bid="1.00", placements=["search"],
              keyword_bids={"trail shoes": "3.00"},
              targeting={"keywords": {"phrase": ["running shoes", "trail shoes"], "negative": ["cheap"]}})
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))

    def sponsored(query):
        body = client.post("/v1/search", json={"query": query, "k": 10}, headers=bearer(key)).json()
        return [i for i in body["items"] if i.get("sponsored")]

    assert sponsored("light running shoes for women")
    trail = sponsored("trail shoes for running")
    assert trail and opened(client, trail[0]["ad_id"]).price <= 3_000_000
    explained = client.post("/v1/search", json={"query": "trail shoes for running", "k": 10, "explain": True},
                            headers=bearer(key)).json()["auction"]
    assert explained["winners"][0]["bid"] == 3_000_000  # the keyword's bid, not the line item's
    assert all(50_000 <= w["price"] <= 3_000_000 for w in explained["winners"])
    assert sponsored("cheap running shoes") == []  # a negative keyword
    assert sponsored("coffee grinder") == []  # no targeted phrase
    assert not [i for i in recommendations(client, key, "u0001")["items"] if i.get("sponsored")]  # search only


def test_the_explanation_says_who_lost_and_why(client):
    client, key, items = client
    kestrel, acme = two_advertisers(client, key, items)
    client.put("/v1/config", json={"config": {"ads": {**ADS_ON["ads"], "relevance_floor": 0.99}}},
               headers=bearer(key))
    body = recommendations(client, key, "u0006", explain="true")
    assert body["auction"]["winners"] == [] and body["auction"]["left_out"]["relevance below the floor"] > 0
    plain = recommendations(client, key, "u0006")
    assert plain["auction"] is None
    read_key = client.post("/v1/keys", json={"scopes": ["read"], "label": "web"}, headers=bearer(key)).json()["api_key"]
    assert client.get("/v1/users/u0006/recommendations", params={"explain": "true"},
                      headers=bearer(read_key)).status_code == 403
    assert not any(i.get("sponsored") for i in body["items"])  # no winner, no sponsored item


@pytest.mark.slow
def test_two_servers_charging_concurrent_clicks_never_overspend_or_charge_twice(shop, tmp_path):
    """Two `lodestar serve` processes on one data dir; many concurrent clicks (each sent to both)
    against a budget of five clicks: spend <= budget + one maximum CPC, every ad id charged at most
    once, and both processes stop serving the line item once its budget cannot pay a click."""
    import os
    import random
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from lodestar.ads import campaigns
    from lodestar.tenant_config import validate_config
    from tests.helpers import free_port, start_serve, wait_until

    settings, key, items = shop
    copy = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    shutil.copytree(settings.data_dir, copy.data_dir)
    products = [i for i, item in items.items() if item["available"]]
    with cdp_session(copy) as store:
        store.set_tenant_config("shop", validate_config(ADS_ON))
        kestrel, _ = campaigns.create_advertiser(store, "shop", "Kestrel", "test")
        campaigns.create_line_item(store, "shop", kestrel["id"], {
            "id": "tiny", "products": products, "bid": "1.00", "daily_budget": "5", "total_budget": "5"}, "test")
    env = {**os.environ, "LODESTAR_DATA_DIR": str(copy.data_dir), "LODESTAR_EMBED_MODEL": MODEL}
    ports = [free_port(), free_port()]
    servers = [start_serve(env, port) for port in ports]
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=bearer(key), timeout=30) for p in ports]
        served, n = [], 0
        secret = copy.secret("ads", "LODESTAR_ADS_SECRET")

        def price_of(ad_id):
            return open_ad_id(secret, "shop", ad_id).price

        while sum(price_of(ad) for _, _, ad in served) < 15_000_000 and n < 400:
            user = f"u{n % 40:04d}"  # a user asked again gets new ads (new ad ids)
            body = clients[n % 2].get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
            served += [(user, i["id"], i["ad_id"]) for i in body["items"] if i.get("sponsored")]
            n += 1
        assert sum(price_of(ad) for _, _, ad in served) >= 15_000_000  # the budget three times over
        max_price = max(price_of(ad) for _, _, ad in served)
        clicks = [(user, item, ad, server) for user, item, ad in served for server in (0, 1)]
        random.Random(7).shuffle(clicks)

        def click(entry):
            user, item, ad, server = entry
            answer = clients[server].post("/v1/events", json={"events": [
                {"user_id": user, "item_id": item, "type": "click", "ad_id": ad}]})
            assert answer.status_code == 200, answer.text
            return ad, answer.json()["ad_clicks"][0]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(click, clicks))
        charged = [ad for ad, outcome in results if outcome["charged"]]
        with cdp_session(copy) as store:
            charges = store.ad_charges("shop")
        assert len(charged) == len(set(charged)) == len(charges) >= 4
        spent = sum(c["price"] for c in charges)
        assert spent == sum(outcome["price"] for _, outcome in results if outcome["charged"])
        assert 5_000_000 - max_price <= spent <= 5_000_000 + max_price
        assert {o["reason"] for _, o in results if not o["charged"]} <= {
        "already charged", "budget spent", "repeat click within the click window"}

        def nobody_serves_it() -> bool:
            return not any(i.get("sponsored") for c in clients for n in range(40, 46)
                           for i in c.get(f"/v1/users/u{n:04d}/recommendations", params={"k": 10}).json()["items"])

        wait_until(nobody_serves_it, timeout=5, message="a process kept serving a line item with no budget left")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def test_the_console_preview_labels_sponsored_items_and_shows_the_auction(client, tmp_path):
    import re

    from lodestar.accounts import add_member, ensure_account

    client, key, items = client
    two_advertisers(client, key, items)
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    with cdp_session(client.app.state.settings) as store:
        ensure_account(store, "viewer@shop.test", "correct horse battery staple", "test")
        add_member(store, "shop", "viewer@shop.test", "viewer", "test")
    page = client.get("/console/signin")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    signed = client.post("/console/signin", data={"_csrf_token": csrf, "email": "viewer@shop.test",
                                                  "password": "correct horse battery staple", "next": "/console/"},
                         follow_redirects=False)
    assert signed.status_code == 303, signed.text
    preview = client.get("/console/t/shop/preview", params={"mode": "user", "user": "u0007"})
    assert preview.status_code == 200
    text = preview.text
    assert text.count('class="badge">Sponsored') == 2 and "The auction" in text and "won position 1" in text
    assert "second price" in text and ("Kestrel" in text or "Acme Audio" in text)
    assert "ad2." not in text  # a preview makes no ad id: nothing shown there can be charged
    search = client.get("/console/t/shop/preview", params={"mode": "query", "query": "running shoes"})
    assert search.status_code == 200 and "The auction" in search.text
    client.app.state.cdp.put_report("shop", "ads", [
        {"day": "2026-11-20", "advertiser": "kestrel", "campaign": "kestrel-all", "line_item": "kestrel-all",
         "product": "p1", "placement": "search", "served": 10, "impressions": 8, "clicks": 2, "charged_clicks": 2,
         "spend": 0.8, "conversions": 1, "view_conversions": 0, "revenue": 30.0}])
    ads = client.get("/console/t/shop/ads")
    assert ads.status_code == 200 and "Retail media" in ads.text and "kestrel-all" in ads.text
    assert "<strong>On</strong>" in ads.text and "Incrementality" in ads.text and "<svg" in ads.text
    assert "37.5" in ads.text  # ROAS of the report's row: 30 / 0.8


def test_pacing_throttles_a_line_item_spending_ahead_of_the_day(client):
    """At 01:00 UTC with half its daily budget spent (the traffic curve is flat before the pipeline
    has measured one), a line item's participation drops after the next pacing step, so it enters
    only a few auctions; one on pace keeps entering every one."""
    from serving.ads import utc_day

    client, key, items = client
    kestrel, acme = advertiser(client, key, "Kestrel"), advertiser(client, key, "Acme Audio")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="ahead", products=products[:60], bid="1.00", daily_budget="40", total_budget="400")
    line_item(client, acme, id="on-pace", products=products[60:], bid="1.00", daily_budget="40", total_budget="400")
    client.put("/v1/config", json={"config": {"ads": {**ADS_ON["ads"], "positions": [1]}}}, headers=bearer(key))
    ads = client.app.state.ads
    import time

    now = [time.time() - time.time() % 86400 + 86400 + 3600]  # tomorrow, 01:00 UTC
    ads._clock = lambda: now[0]
    store = client.app.state.cdp
    for n in range(20):  # 20 of its 40 a day spent in the first hour
        store.charge_click("shop", {"ad_id": f"early-{n}", "line_item": "ahead", "advertiser": "kestrel",
                                    "product": products[0], "user_id": f"x{n}", "price": 1_000_000,
                                    "day": utc_day(now[0]), "ts": now[0]}, 40_000_000, 400_000_000)

    def winners(requests: int) -> dict[str, int]:
        counts = {"ahead": 0, "on-pace": 0}
        for n in range(requests):
            for item in recommendations(client, key, f"u{n % 50:04d}")["items"]:
                if item.get("sponsored"):
                    counts[opened(client, item["ad_id"]).line_item] += 1
        return counts

    before = winners(20)
    assert before["ahead"] > 0  # no pacing step yet: it still takes part
    now[0] += 61  # the next pacing step
    recommendations(client, key, "u0001")
    from tests.helpers import wait_until

    wait_until(lambda: ads._states["shop"].participation.get("ahead", 1.0) < 0.1, timeout=5,
               message="pacing did not lower the participation of a line item far ahead of its day")
    assert ads._states["shop"].participation["on-pace"] == 1.0  # nothing spent, behind the curve: stays in
    after = winners(60)
    assert after["ahead"] <= 12 < after["on-pace"]  # about 2.5% of auctions, not most of them



def test_a_campaign_holds_out_its_share_of_users_and_records_what_they_would_have_seen(client):
    from lodestar.ads.incrementality import campaign_key, held_out

    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    products = [i for i, item in items.items() if item["available"]]
    line_item(client, kestrel, id="fall", campaign="fall", products=products, bid="1.00", holdout=0.5)
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    users = [f"u{n:04d}" for n in range(40)]
    held = {u for u in users if held_out(campaign_key("kestrel", "fall"), u, 0.5)}
    assert 10 <= len(held) <= 30
    for user in users:
        body = recommendations(client, key, user, explain="true")
        shown = [i for i in body["items"] if i.get("sponsored")]
        assert (not shown) == (user in held), user  # held out: never the campaign's ads
        if user in held:
            assert body["auction"]["held_out"] and len(body["items"]) == 10  # the organic list fills the slots
    client.app.state.served_log.flush()
    serves = client.app.state.cdp.read_ad_serves("shop")
    assert {s["user_id"] for s in serves if s["ghost"]} == held
    assert {s["user_id"] for s in serves if not s["ghost"]} == set(users) - held
    assert {(s["campaign"], s["advertiser"]) for s in serves} == {("fall", "kestrel")}
    shown = [s for s in serves if not s["ghost"]]
    assert all(s["ad_id"].startswith("ad2.") and s["position"] in (1, 5) and 0 <= s["relevance"] <= 1
               and 0 < s["price"] <= s["bid"] == 1_000_000 for s in shown)  # what the click model learns from
    assert all(s["ad_id"] is None for s in serves if s["ghost"])  # never shown: no ad id
    anonymous = client.post("/v1/search", json={"query": "running shoes", "k": 10}, headers=bearer(key)).json()
    assert any(i.get("sponsored") for i in anonymous["items"])  # no user, no holdout


def test_the_report_as_csv_for_the_advertiser_and_the_shop(client):
    import csv
    import io

    client, key, items = client
    kestrel, acme = two_advertisers(client, key, items)
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    client.app.state.cdp.put_report("shop", "ads", [
        {"day": "2026-11-20", "advertiser": "kestrel", "campaign": "kestrel-all", "line_item": "kestrel-all",
         "product": "p1", "placement": "search", "served": 10, "clicks": 2, "spend": 0.8, "roas": 3.0},
        {"day": "2026-11-20", "advertiser": "acme-audio", "campaign": "acme-all", "line_item": "acme-all",
         "product": "p2", "placement": "search", "served": 5, "clicks": 0, "spend": 0.0, "roas": None}])
    mine = client.get("/v1/ads/report.csv", headers=bearer(kestrel))
    assert mine.status_code == 200 and mine.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(mine.text)))
    assert [(r["advertiser"], r["served"], r["spend"]) for r in rows] == [("kestrel", "10", "0.8")]
    assert "attachment" in mine.headers["content-disposition"] and rows[0]["share_of_voice"] == ""
    everyone = list(csv.DictReader(io.StringIO(client.get("/v1/advertisers/report.csv", headers=bearer(key)).text)))
    assert {r["advertiser"] for r in everyone} == {"kestrel", "acme-audio"}
    assert client.get("/v1/advertisers/report.csv", headers=bearer(kestrel)).status_code == 403


def test_a_published_ad_quality_model_ranks_by_pctr_times_bid(client):
    from lodestar.ads.quality import FEATURES

    client, key, items = client
    two_advertisers(client, key, items)  # Kestrel bids 0.80, Acme Audio 0.40
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))

    def winners():
        return [w["line_item"] for u in ("u0010", "u0011", "u0012")
                for w in recommendations(client, key, u, explain="true")["auction"]["winners"]]

    assert winners().count("kestrel-all") > 0  # by bid x relevance, Kestrel wins slots
    # A model that learned Acme's ads get clicked and Kestrel's do not.
    model = {"features": list(FEATURES), "coef": [0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0], "intercept": -3.0,
             "mean": [0.5, 0.5, 0.5, 3.0, 0.05, 0.05, 0.0, 0.0, 0.0],
             "scale": [1.0, 1.0, 1.0, 1.0, 0.05, 1.0, 1.0, 1.0, 1.0],
             "prior_ctr": 0.05, "line_item_ctr": {"acme-all": 0.2, "kestrel-all": 0.01}}
    client.app.state.cdp.put_report("shop", "ad_quality", [model])
    client.app.state.ads._states.clear()  # (in production: within a minute)
    picked = winners()
    assert picked and set(picked) == {"acme-all"}
    auction = recommendations(client, key, "u0013", explain="true")["auction"]
    assert all(w["pctr"] > 0.9 for w in auction["winners"])
    # Kestrel's ads, at eCPM 0.80 x 0.001, rank below every one of Acme's (0.40 x 0.99).
    assert auction["losers"] and all(loser["line_item"] == "acme-all" for loser in auction["losers"])


def test_the_ad_quality_asset_learns_from_the_serve_log_and_publishes_through_its_check(shop, tmp_path):
    import random
    import shutil

    from dagster import DagsterInstance, materialize

    from assets.partitions import TENANTS
    from assets.resources import LodestarResource
    from lodestar.ads import campaigns
    from pipelines.definitions import all_assets

    settings, key, items = shop
    copy = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    shutil.copytree(settings.data_dir, copy.data_dir)
    products = [i for i, item in items.items() if item["available"]][:20]
    rng = random.Random(3)
    with cdp_session(copy) as store:
        kestrel, _ = campaigns.create_advertiser(store, "shop", "Kestrel", "test")
        campaigns.create_line_item(store, "shop", kestrel["id"], {"id": "li", "products": products, "bid": "1",
                                                                   "daily_budget": "9", "total_budget": "9"}, "test")
        serves, clicks = [], []
        for n in range(1200):
            relevance, position = rng.random(), 1 if n % 2 else 5
            serves.append({"user_id": f"u{n % 60:04d}", "line_item": "li", "campaign": "li", "advertiser": "kestrel",
                           "product": products[n % 20], "placement": "recommendations", "ghost": False,
                           "ts": 1_790_000_000.0 + n, "ad_id": f"ad-{n}", "position": position, "relevance": relevance,
                           "bid": 1_000_000, "price": 500_000})
            if rng.random() < 0.02 + 0.25 * relevance * (1.0 if position == 1 else 0.3):  # relevant, and on top
                clicks.append({"user_id": f"u{n % 60:04d}", "item_id": products[n % 20], "type": "click",
                               "ts": 1_790_000_000.0 + n + 5, "ad_id": f"ad-{n}", "value": None,
                               "recommendation_id": None, "id": f"click-{n}"})
        store.log_ad_serves("shop", serves)
        store.append_events("shop", clicks)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS, ["shop"])
    result = materialize(all_assets(), selection=["cdp_events", "ad_quality_model"], partition_key="shop",
                         instance=instance, resources={"lodestar": LodestarResource(data_dir=str(copy.data_dir),
                                                                                     embed_model=MODEL)})
    assert result.success
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "not_worse_than_published"]
    assert check.passed
    with cdp_session(copy) as store:
        (model,) = store.get_report("shop", "ad_quality")["rows"]
    assert model["metrics"]["model"]["auc"] > 0.6 and model["coef"][0] > 0  # relevance raises pCTR
    assert model["metrics"]["serves"] == 1200 and model["metrics"]["clicks"] == len(clicks)


def test_a_goal_line_item_is_bid_by_the_bidder_and_first_price_charges_the_bid(client):
    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    products = [i for i, item in items.items() if item["available"]]
    refused = client.post("/v1/ads/line-items", headers=bearer(kestrel), json={
        "id": "x", "products": products[:3], "bid": "1", "daily_budget": "50", "total_budget": "100",
        "goal": {"type": "target_roas", "target": 4, "max_bid": "2.00"}})
    assert refused.status_code == 422 and "has no bid" in refused.text
    made = line_item(client, kestrel, id="roas", products=products,
                     goal={"type": "target_roas", "target": 4, "max_bid": "2.00"})
    assert made["goal"] == {"type": "target_roas", "target": 4.0, "max_bid": 2_000_000}
    client.put("/v1/config", json={"config": {"ads": {**ADS_ON["ads"], "auction": "first_price"}}},
               headers=bearer(key))
    auction = recommendations(client, key, "u0010", explain="true")["auction"]
    winner = auction["winners"][0]
    # The bidder's bid: a click's worth at the target (5% conversion, the products' mean price, / 4),
    # under the max bid; at first price the winner pays it.
    prices = [float(items[p]["attributes"]["price"]) for p in products if "price" in items[p]["attributes"]]
    worth = 0.05 * (sum(prices) / len(prices)) / 4
    multiplier = client.app.state.ads._states["shop"].multipliers["roas"]  # its first step: behind pace, up
    assert 1.0 < multiplier <= 1.25
    assert winner["bid"] == min(2_000_000, int(worth * multiplier * 1e6)) and winner["price"] == winner["bid"]
    assert client.put("/v1/config", json={"config": {"ads": {"auction": "sealed"}}},
                      headers=bearer(key)).status_code == 422


def test_a_goal_line_item_keeps_the_bidders_bid_on_search_and_takes_no_keyword_bids(client):
    client, key, items = client
    kestrel = advertiser(client, key, "Kestrel")
    running = by_category(items, "running")
    refused = client.post("/v1/ads/line-items", headers=bearer(kestrel), json={
        "id": "kw", "products": running[:3], "daily_budget": "50", "total_budget": "100",
        "keyword_bids": {"shoes": "9.00"}, "goal": {"type": "max_clicks", "max_bid": "1.00"}})
    assert refused.status_code == 422 and "keyword_bids" in refused.text
    line_item(client, kestrel, id="goal", products=[i for i, item in items.items() if item["available"]],
              placements=["search"],
              targeting={"keywords": {"phrase": ["running shoes"]}}, goal={"type": "max_clicks", "max_bid": "1.00"})
    client.put("/v1/config", json={"config": ADS_ON}, headers=bearer(key))
    auction = client.post("/v1/search", json={"query": "light running shoes for running", "k": 10, "explain": True},
                          headers=bearer(key)).json()["auction"]
    bids = {w["bid"] for w in auction["winners"]} | {loser["bid"] for loser in auction["losers"]}
    assert bids and all(0 < b <= 1_000_000 for b in bids) and 1_000_000 not in bids  # the bidder's, under max
