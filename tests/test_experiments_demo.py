"""An experiment on the demo shop itself (2,400 products, 600 users, the real model, every asset
through Dagster): users click what they are shown, preferring sale items, so a variant that boosts
sale items earns more clicks only if the API really serves it. The report must find that."""

from __future__ import annotations

import random

import pytest
from litestar.testing import TestClient

from lodestar.cdp import cdp_session
from lodestar.settings import Settings
from pipelines.run import materialize_in_process
from serving.app import create_app
from tests.conftest import load_demo_tenant

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_a_sale_boost_on_the_demo_shop_wins_through_the_clicks_it_earns(tmp_path):
    settings = Settings(data_dir=tmp_path / "var")
    with cdp_session(settings) as store:
        key = load_demo_tenant(store, settings, "shop", "shop")
        on_sale = {i["id"] for i in store.find("shop", "items", "", limit=5000) if "sale" in i["tags"]}
    assert materialize_in_process(str(settings.data_dir), "shop", log_level="WARNING").success
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        made = client.post("/v1/experiments", headers=auth, json={
            "name": "sale-boost", "hypothesis": "Boosting sale items raises CTR", "min_days": 0, "mde": 0.5,
            "baseline": {"mean": 0.08, "sd": 0.09},
            "variants": [{"name": "control"}, {"name": "boost", "overlay": {"rules": [
                {"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.5}]}}]})
        assert made.status_code == 201, made.text
        needed = made.json()["plan"]["units"]
        client.app.state.experiments._refresh = 0.0
        rng = random.Random(21)
        for n in range(1, 601):
            user = f"u{n:04d}"
            served = client.get(f"/v1/users/{user}/recommendations?k=10", headers=auth).json()
            clicks = [{"user_id": user, "item_id": item["id"], "type": "click",
                       "recommendation_id": served["recommendation_id"]}
                      for item in served["items"] if rng.random() < (0.25 if item["id"] in on_sale else 0.05)]
            if clicks:
                assert client.post("/v1/events", json={"events": clicks}, headers=auth).status_code == 200
        client.app.state.served_log.flush()
        assert materialize_in_process(str(settings.data_dir), "shop", log_level="WARNING").success
        report = client.get("/v1/experiments/sale-boost", headers=auth).json()["report"]
    control, boost = report["variants"]
    assert report["horizon"]["reached"] and control["units"] >= needed["control"] and boost["units"] >= needed["boost"]
    assert not report["srm"]["broken"]
    ctr = boost["metrics"]["ctr"]
    assert ctr["significant"] and ctr["lift"] > 0 and ctr["lift_low"] > 0
    assert report["verdict"].startswith("winner: boost")
