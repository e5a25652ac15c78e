"""Advertisers and their line items over the API: an advertiser's key sees and changes only its own
line items, never the tenant's users or another advertiser's data; line items are validated field by
field, money stored in micros, products checked against the catalog."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from lodestar import cli
from lodestar.cdp import cdp_session
from lodestar.keys import issue_key
from lodestar.records import parse_item
from serving.app import create_app
from tests.helpers import app_settings_with, bearer

LINE_ITEM = {"id": "boots-q4", "campaign": "winter", "products": ["p1", "p2"], "bid": "0.35",
             "keyword_bids": {"boots": "0.50"}, "daily_budget": "10", "total_budget": "100",
             "placements": ["recommendations", "search"],
             "targeting": {"categories": ["Shoes"], "keywords": {"phrase": ["hiking boots"], "negative": ["cheap"]}},
             "frequency_cap": {"per_user_per_day": 3}}


@pytest.fixture()
def shop(tmp_path):
    settings = app_settings_with(tmp_path, "shop", "other")
    with cdp_session(settings) as store:
        store.upsert_items("shop", [parse_item({"id": i, "title": f"item {i}"}) for i in ("p1", "p2", "p3")])
        store.upsert_items("shop", [parse_item({"id": "gone", "title": "x", "available": False})])
        admin = issue_key(store, "shop")
    with TestClient(create_app(settings)) as client:
        yield client, admin, settings


def test_advertisers_get_keys_that_reach_their_own_line_items_only(shop):
    client, admin, _ = shop
    made = client.post("/v1/advertisers", json={"name": "Zeta Shoes"}, headers=bearer(admin))
    assert made.status_code == 201 and made.json()["advertiser"]["id"] == "zeta-shoes"
    zeta = made.json()["api_key"]
    other = client.post("/v1/advertisers", json={"name": "Acme Ads"}, headers=bearer(admin)).json()["api_key"]
    assert client.post("/v1/advertisers", json={"name": "Zeta  shoes"}, headers=bearer(admin)).status_code == 409

    created = client.post("/v1/ads/line-items", json=LINE_ITEM, headers=bearer(zeta))
    assert created.status_code == 201, created.text
    item = created.json()
    assert (item["bid"], item["daily_budget"], item["total_budget"]) == (350_000, 10_000_000, 100_000_000)
    assert item["keyword_bids"] == {"boots": 500_000} and item["advertiser"] == "zeta-shoes"
    assert item["targeting"]["categories"] == ["shoes"] and item["status"] == "active"
    shown = client.get("/v1/ads/line-items/boots-q4", headers=bearer(zeta)).json()
    assert shown["spent_today"] == shown["spent_total"] == 0

    # Another advertiser sees nothing of it, and cannot change it.
    assert client.get("/v1/ads/line-items", headers=bearer(other)).json() == {"line_items": []}
    assert client.get("/v1/ads/line-items/boots-q4", headers=bearer(other)).status_code == 404
    assert client.post("/v1/ads/line-items/boots-q4/status", json={"status": "paused"},
                       headers=bearer(other)).status_code == 404
    # An advertiser's key reaches no tenant route, and a tenant key no advertiser route.
    for method, path in (("get", "/v1/users/u1/recommendations"), ("get", "/v1/keys"), ("get", "/v1/config"),
                         ("get", "/v1/advertisers"), ("get", "/v1/experiments")):
        answer = getattr(client, method)(path, headers=bearer(zeta))
        assert answer.status_code == 403 and "advertiser's key works on /v1/ads" in answer.json()["detail"], path
    assert client.get("/v1/ads/line-items", headers=bearer(admin)).status_code == 403
    listed = {k["label"]: k["scopes"] for k in client.get("/v1/keys", headers=bearer(admin)).json()["keys"]}
    assert listed["advertiser zeta-shoes"] == ["advertiser"]  # never listed as a tenant key's scopes

    paused = client.post("/v1/ads/line-items/boots-q4/status", json={"status": "paused"}, headers=bearer(zeta))
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert client.post("/v1/ads/line-items/boots-q4/status", json={"status": "paused"},
                       headers=bearer(zeta)).status_code == 409
    audit = [e["action"] for e in client.get("/v1/audit", headers=bearer(admin)).json()["entries"]]
    assert {"advertiser.create", "line_item.create", "line_item.status"} <= set(audit)


@pytest.mark.parametrize("change, field", [
    ({"bid": "-1"}, "bid"), ({"bid": "0.1234567"}, "bid"), ({"bid": 0}, "bid"),
    ({"daily_budget": "200"}, "daily_budget"), ({"products": []}, "products"),
    ({"products": ["p1", "nope"]}, "products"), ({"products": ["gone"]}, "products"),
    ({"placements": ["homepage"]}, "placements"), ({"status": "ended"}, "status"),
    ({"targeting": {"segments": ["vip"]}}, "targeting.segments"), ({"frequency_cap": {"per_user_per_day": 0}},
                                                                    "frequency_cap"),
    ({"id": "Bad Id"}, "id"), ({"colour": "red"}, "colour"), ({"end": "2001-01-01T00:00:00Z"}, "end"),
    ({"start": 10**400}, "start"), ({"bid": "\u0661"}, "bid"), ({"bid": "1000000000"}, "bid"),
    ({"keyword_bids": {"boots": "0"}}, "keyword_bids.boots"), ({"keyword_bids": {" ": "0.1"}}, "keyword_bids"),
    ({"name": {"a": 1}}, "name"),
])
def test_line_items_are_validated_field_by_field(shop, change, field):
    client, admin, _ = shop
    key = client.post("/v1/advertisers", json={"name": "Zeta"}, headers=bearer(admin)).json()["api_key"]
    answer = client.post("/v1/ads/line-items", json={**LINE_ITEM, **change}, headers=bearer(key))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == field, answer.text


def test_the_cli_creates_and_lists_advertisers(shop, monkeypatch, capsys):
    _, _, settings = shop
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(settings.data_dir))
    assert cli.main(["advertisers", "create", "--tenant", "shop", "Bolt Bikes"]) == 0
    assert "Its API key (shown once" in capsys.readouterr().out
    assert cli.main(["advertisers", "list", "--tenant", "shop"]) == 0
    assert '"id": "bolt-bikes"' in capsys.readouterr().out


def test_the_ads_settings_are_off_by_default_and_validated():
    from lodestar.errors import InvalidInput
    from lodestar.tenant_config import TenantConfig, effective_config, validate_config

    assert effective_config({}).ads.enabled is False and effective_config({}).ads.positions == (1, 5)
    on = effective_config({"ads": {"enabled": True, "positions": [2, 6], "reserve": 0.05}})
    assert TenantConfig.from_dict({**on.as_dict(), "ads": {**on.as_dict()["ads"], "later": 1}}).ads == on.ads
    for bad, field in (({"enabled": "yes"}, "ads.enabled"), ({"positions": [1, 1]}, "ads.positions"),
                       ({"positions": [0]}, "ads.positions"), ({"click_window_s": 0.5}, "ads.click_window_s"),
                       ({"reserve": 0}, "ads.reserve"), ({"reserve": 1e300}, "ads.reserve"),
                       ({"attribution_scope": "shop"}, "ads.attribution_scope"), ({"bids": 1}, "ads.bids"),
                       ({"relevance_floor": 2}, "ads.relevance_floor")):
        with pytest.raises(InvalidInput) as refused:
            validate_config({"ads": bad})
        assert refused.value.field == field, bad


def test_the_line_items_of_a_campaign_share_one_holdout(shop):
    client, admin, _ = shop
    key = client.post("/v1/advertisers", json={"name": "Zeta"}, headers=bearer(admin)).json()["api_key"]
    base = {"products": ["p1"], "bid": "0.5", "daily_budget": "5", "total_budget": "5", "campaign": "spring"}
    assert client.post("/v1/ads/line-items", json={**base, "id": "a", "holdout": 0.2},
                       headers=bearer(key)).status_code == 201
    mixed = client.post("/v1/ads/line-items", json={**base, "id": "b", "holdout": 0.1}, headers=bearer(key))
    assert mixed.status_code == 422 and "share one holdout" in mixed.text
    assert client.post("/v1/ads/line-items", json={**base, "id": "c", "holdout": 0.2},
                       headers=bearer(key)).status_code == 201
    assert client.post("/v1/ads/line-items", json={**base, "id": "d", "holdout": 0.6},
                       headers=bearer(key)).status_code == 422  # at most half the users
