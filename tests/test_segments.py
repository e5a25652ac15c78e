"""Audience segments: definitions validated like configuration, rules evaluated with planted truth,
lookalikes nearest to their seed, members kept by a Dagster asset (incrementally: a purchase puts
its user into the matching segment at the next refresh), read over the API by the tenant only,
sizes (above a minimum) for advertisers, and line items that target a segment."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from litestar.testing import TestClient

from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import demo
from lodestar.cdp import cdp_session
from lodestar.errors import InvalidInput
from lodestar.importer import import_files
from lodestar.keys import issue_key
from lodestar.lineage.files import TenantFiles
from lodestar.lineage.segment_refresh import refresh_segments
from lodestar.segments import Population, lookalikes, members, parse_segments
from lodestar.settings import Settings
from lodestar.tenant_config import effective_config
from pipelines.definitions import all_assets
from serving.app import create_app
from tests.helpers import bearer, wait_until

MODEL = "hashing-64"
NOW = 1_800_000_000.0
DAY = 86400


def population() -> Population:
    users = pd.DataFrame({"id": ["ann", "bob", "cy", "dee"], "attributes": [
        {"country": "US", "age": 34, "interests": ["running", "books"]}, {"country": "DE", "age": 19},
        {"country": "us", "age": 51}, {}]})
    items = pd.DataFrame({"id": ["shoe", "sock", "mug"], "categories": [["running"], ["running"], ["kitchen"]],
                          "attributes": [{"brand": "Kestrel"}, {"brand": "Zeta"}, {"brand": "Kestrel"}]})
    events = pd.DataFrame([
        ("ann", "shoe", "purchase", NOW - 2 * DAY), ("bob", "shoe", "purchase", NOW - 40 * DAY),
        ("bob", "mug", "view", NOW - DAY), ("bob", "mug", "view", NOW - DAY), ("bob", "shoe", "view", NOW - DAY),
        ("cy", "sock", "view", NOW - 3 * DAY), ("dee", "mug", "purchase", NOW - DAY)],
        columns=["user_id", "item_id", "type", "ts"])
    return Population(users, events, items, NOW)


@pytest.mark.parametrize("rule, expected", [
    ({"attribute": "country", "in": ["US"]}, {"ann", "cy"}),  # case-insensitive text
    ({"attribute": "age", "gte": 18, "lt": 35}, {"ann", "bob"}),
    ({"attribute": "interests", "in": ["running"]}, {"ann"}),  # a list attribute: any of its values
    ({"event": "purchase", "category": "running", "days": 30}, {"ann"}),  # bob's is 40 days old
    ({"event": "view", "brand": "kestrel", "days": 14, "min": 3}, {"bob"}),  # mug, mug, shoe: all Kestrel
    ({"event": ["view", "purchase"], "item": "mug", "days": 7}, {"bob", "dee"}),
    ({"all": [{"attribute": "country", "in": ["US"]}, {"not": {"event": "purchase", "days": 30}}]}, {"cy"}),
    ({"any": [{"attribute": "country", "in": ["DE"]}, {"event": "purchase", "item": "mug"}]}, {"bob", "dee"}),
])
def test_rules_pick_exactly_the_users_they_describe(rule, expected):
    assert members(rule, population()) == expected


@pytest.mark.parametrize("raw, field", [
    ([{"name": "Bad Name", "rule": {"attribute": "x", "in": [1]}}], "segments[0].name"),
    ([{"name": "a", "rule": {"event": "buy"}}], "segments[0].rule.event"),
    ([{"name": "a", "rule": {"event": "view", "days": 0}}], "segments[0].rule.days"),
    ([{"name": "a", "rule": {"all": []}}], "segments[0].rule.all"),
    ([{"name": "a", "rule": {"all": [{"attribute": "x"}]}}], "segments[0].rule.all[0]"),
    ([{"name": "a", "rule": {"event": "view", "category": "x", "brand": "y"}}], "segments[0].rule"),
    ([{"name": "a", "lookalike": {"seed": "nope", "size": 10}}], "segments[0].lookalike.seed"),
    ([{"name": "a", "rule": {"attribute": "x", "in": [1]}}, {"name": "a", "lookalike": {"seed": "a", "size": 5}}],
     "segments[1].name"),
    ([{"name": "a", "rule": {"attribute": "x", "in": [1]}, "lookalike": {"seed": "a", "size": 5}}], "segments[0]"),
])
def test_definitions_are_refused_naming_the_field(raw, field):
    with pytest.raises(InvalidInput) as caught:
        parse_segments(raw)
    assert caught.value.field == field


def test_lookalikes_are_the_users_nearest_the_seed_in_taste_space():
    rng = np.random.default_rng(3)
    runner, cook = rng.normal(size=16), rng.normal(size=16)
    vectors = {f"r{n}": runner + 0.3 * rng.normal(size=16) for n in range(20)}
    vectors |= {f"c{n}": cook + 0.3 * rng.normal(size=16) for n in range(20)}
    seed = {f"r{n}" for n in range(5)}
    picked = lookalikes(seed, vectors, 10)
    assert len(picked) == 10 and not picked & seed and all(u.startswith("r") for u in picked)


SEGMENTS = [{"name": "runners", "rule": {"event": "purchase", "category": "running", "days": 3650}},
            {"name": "us", "rule": {"attribute": "country", "in": ["US"]}},
            {"name": "runner-lookalikes", "lookalike": {"seed": "runners", "size": 5}}]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segments")
    settings = Settings(data_dir=tmp / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("shop")
        key = issue_key(store, "shop")
        import_files(store, settings, "shop", demo.write_demo(tmp / "in", "shop", n_items=120, n_users=60))
        store.set_tenant_config("shop", {"segments": SEGMENTS, "ads": {"enabled": True, "positions": [1, 5],
                                                                       "relevance_floor": 0.0, "audience_min_size": 6}})
    run_assets(settings)
    return settings, key


@pytest.fixture()
def client(shop, tmp_path):
    settings, key = shop
    copy = Settings(data_dir=tmp_path / "var", embed_model=MODEL)
    shutil.copytree(settings.data_dir, copy.data_dir)
    with TestClient(create_app(copy)) as test_client:
        test_client.app.state.ads._refresh = 0.0
        yield test_client, key, copy


def run_assets(settings, selection=None):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS, ["shop"])
    resource = LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)
    assert materialize(all_assets(), selection=selection, partition_key="shop", instance=instance,
                       resources={"lodestar": resource}).success


def refresh(settings):
    run_assets(settings, ["cdp_users", "cdp_events", "cdp_items", "audience_segments"])


def test_the_asset_keeps_members_and_a_purchase_enters_the_segment_at_the_next_refresh(client, monkeypatch):
    from lodestar.lineage import segment_refresh

    monkeypatch.setattr(segment_refresh, "WATERMARK_MARGIN_S", 0.0)  # the import was seconds ago: count exactly
    client, key, settings = client
    listed = {s["name"]: s for s in client.get("/v1/segments", headers=bearer(key)).json()["segments"]}
    assert listed["runners"]["size"] > 0 and listed["us"]["size"] > 0 and listed["runner-lookalikes"]["size"] == 5
    runners = set(client.get("/v1/segments/runners/members", headers=bearer(key)).json()["members"])
    with cdp_session(settings) as store:
        running = next(i["id"] for batch in store.read_changes("shop", "items") for i in batch
                       if "running" in i["categories"])
        outsider = next(u["id"] for batch in store.read_changes("shop", "users") for u in batch
                        if u["id"] not in runners)
    assert "runners" not in client.get(f"/v1/users/{outsider}/segments", headers=bearer(key)).json()["segments"]
    bought = client.post("/v1/events", headers=bearer(key), json={"events": [
        {"user_id": outsider, "item_id": running, "type": "purchase"}]})
    assert bought.status_code == 200
    run_assets(settings, ["cdp_users", "cdp_events", "cdp_items"])  # what the sensor does on a CDP change
    with cdp_session(settings) as store:
        config = effective_config(store.get_tenant("shop")["config"])
        result = refresh_segments(store, "shop", TenantFiles(settings.tenant_dir("shop")), config)
    assert (result.mode, result.changed_users, result.added["runners"], result.removed["runners"]) == (
        "incremental", 1, 1, 0)
    assert "runners" in client.get(f"/v1/users/{outsider}/segments", headers=bearer(key)).json()["segments"]
    assert result.sizes["runners"] == len(runners) + 1
    refresh(settings)  # the asset, through Dagster: nothing changed since
    assert client.get("/v1/segments", headers=bearer(key)).json()["segments"][0]["size"] == len(runners) + 1
    lookalike = set(client.get("/v1/segments/runner-lookalikes/members", headers=bearer(key)).json()["members"])
    assert len(lookalike) == 5 and not lookalike & runners  # kept until the next full refresh


def test_advertisers_see_sizes_above_the_minimum_and_never_members_or_users(client):
    client, key, settings = client
    adv = client.post("/v1/advertisers", json={"name": "Kestrel"}, headers=bearer(key)).json()["api_key"]
    seen = {s["name"]: s["size"] for s in client.get("/v1/ads/segments", headers=bearer(adv)).json()["segments"]}
    sizes = {s["name"]: s["size"] for s in client.get("/v1/segments", headers=bearer(key)).json()["segments"]}
    for name, size in sizes.items():
        assert seen[name] == (size if size >= 6 else None)
    assert seen["runner-lookalikes"] is None  # 5 members: below the shop's minimum of 6
    for path in ("/v1/segments", "/v1/segments/runners/members", "/v1/users/u0001/segments",
                 "/v1/users/u0001/preferences", "/v1/advertisers/report"):
        assert client.get(path, headers=bearer(adv)).status_code == 403, path
    read_key = client.post("/v1/keys", json={"scopes": ["read"], "label": "web"}, headers=bearer(key)).json()["api_key"]
    assert client.get("/v1/users/u0001/segments", headers=bearer(read_key)).status_code == 403


def test_a_line_item_targeting_a_segment_reaches_its_members_only(client):
    client, key, settings = client
    adv = client.post("/v1/advertisers", json={"name": "Kestrel"}, headers=bearer(key)).json()["api_key"]
    with cdp_session(settings) as store:
        products = [i["id"] for batch in store.read_changes("shop", "items") for i in batch if i["available"]]
        us = set(store.segment_members("shop", "us"))
    refused = client.post("/v1/ads/line-items", headers=bearer(adv), json={
        "id": "x", "products": products[:5], "bid": "1", "daily_budget": "5", "total_budget": "5",
        "targeting": {"segments": ["nobody-knows"]}})
    assert refused.status_code == 422 and "targeting.segments" in refused.text
    tiny = client.post("/v1/ads/line-items", headers=bearer(adv), json={
        "id": "tiny", "products": products[:5], "bid": "1", "daily_budget": "5", "total_budget": "5",
        "targeting": {"segments": ["runner-lookalikes"]}})
    assert tiny.status_code == 422 and "fewer than 6 members" in tiny.text  # too small to target
    made = client.post("/v1/ads/line-items", headers=bearer(adv), json={
        "id": "us-only", "products": products, "bid": "1", "daily_budget": "50", "total_budget": "50",
        "targeting": {"segments": ["us"]}, "holdout": 0})
    assert made.status_code == 201, made.text
    users = [f"u{n:04d}" for n in range(40)]
    shown = {u: any(i.get("sponsored") for i in client.get(f"/v1/users/{u}/recommendations?k=10",
                                                          headers=bearer(key)).json()["items"]) for u in users}
    assert {u for u, s in shown.items() if s} == {u for u in users if u in us} != set()
    # The shop raises its minimum audience above the segment's size: the line item stops serving.
    assert client.put("/v1/config", json={"config": {"ads": {"audience_min_size": 10_000}}},
                      headers=bearer(key)).status_code == 200
    member = sorted(us)[0]

    def sponsored_for(user):
        return [i for i in client.get(f"/v1/users/{user}/recommendations?k=10", headers=bearer(key)).json()["items"]
                if i.get("sponsored")]

    wait_until(lambda: not sponsored_for(member), timeout=5, message="a line item kept targeting a too-small audience")
    searched = client.post("/v1/search", json={"query": "running shoes", "k": 10}, headers=bearer(key))
    assert searched.status_code == 200, searched.text
    searched = searched.json()
    assert not any(i.get("sponsored") for i in searched["items"])  # no user: no segment, no ad


def test_an_experiment_for_an_audience_takes_only_its_users(client):
    client, key, settings = client
    refused = client.post("/v1/experiments", headers=bearer(key), json={
        "name": "x", "audience": "nobody", "variants": [{"name": "control"}, {"name": "b", "overlay": {"diversity": 0.5}}]})
    assert refused.status_code == 422 and "audience" in refused.text
    made = client.post("/v1/experiments", headers=bearer(key), json={
        "name": "us-diversity", "audience": "us", "min_days": 0, "baseline": {"mean": 0.1, "sd": 0.1},
        "placements": ["recommendations", "session"],
        "variants": [{"name": "control"}, {"name": "diverse", "overlay": {"diversity": 0.5}}]})
    assert made.status_code == 201, made.text
    client.app.state.experiments._refresh = 0.0
    with cdp_session(settings) as store:
        us = set(store.segment_members("shop", "us"))
    users = [f"u{n:04d}" for n in range(30)]
    inside = {u for u in users
              if client.get(f"/v1/users/{u}/recommendations?k=5", headers=bearer(key)).json()["experiment"]}
    assert inside == {u for u in users if u in us} != set()
    session = client.post("/v1/recommendations/session", headers=bearer(key),
                          json={"item_ids": ["p00001"], "session_id": "s1"}).json()
    assert session["experiment"] is None  # a session is in no segment
    member = sorted(us)[0]
    as_member = client.post("/v1/recommendations/session", headers=bearer(key),
                            json={"item_ids": ["p00001"], "user_id": member}).json()
    assert as_member["experiment"] == "us-diversity"
