"""Incrementality with planted truth: simulated users where one campaign's ads truly raise its
products' purchase rate by 3 points and another's do nothing. Over many seeds the report (ghost-ad
holdouts, statsmodels' Newcombe interval) recovers the first lift within its interval and calls it
significant, does not call the second significant, and never fails; purchases before exposure or
after the window do not count; users both shown and held out are left out."""

from __future__ import annotations

import numpy as np
import pytest

from lodestar.ads.incrementality import held_out, incrementality

T0 = 1_800_000_000.0
DAY = 86400
LINE_ITEMS = {"a-li": {"advertiser": "alpha", "campaign": "a", "products": ["pa"]},
              "b-li": {"advertiser": "beta", "campaign": "b", "products": ["pb"]}}
ITEMS = {"pa": {"attributes": {"price": 40.0}}, "pb": {"attributes": {"price": 10.0}}}
TRUTH = {"a": 0.03, "b": 0.0}
BASE = 0.05


def simulate(users: int = 20_000, seed: int = 7):
    rng = np.random.default_rng(seed)
    serves, purchases, charges = [], [], []
    for n in range(users):
        user = f"u{n}"
        for campaign, product, line in (("a", "pa", "a-li"), ("b", "pb", "b-li")):
            ghost = held_out(campaign, user, 0.10)
            t0 = T0 + rng.uniform(0, DAY)
            serves.append({"user_id": user, "line_item": line, "campaign": campaign,
                           "advertiser": LINE_ITEMS[line]["advertiser"], "product": product,
                           "placement": "recommendations", "ghost": ghost, "ts": t0})
            if not ghost and rng.random() < 0.2:
                charges.append({"line_item": line, "user_id": user, "price": 150_000})
            if rng.random() < BASE + (0.0 if ghost else TRUTH[campaign]):
                purchases.append({"user_id": user, "item_id": product, "type": "purchase", "value": None,
                                  "ts": t0 + rng.uniform(60, 3 * DAY)})
            if rng.random() < 0.03:  # before the first exposure, and after the window: never counted
                purchases.append({"user_id": user, "item_id": product, "type": "purchase", "value": 40.0,
                                  "ts": t0 - 3600})
                purchases.append({"user_id": user, "item_id": product, "type": "purchase", "value": 40.0,
                                  "ts": t0 + 8 * DAY})
    return serves, purchases, charges


def report(serves, purchases, charges):
    return {r["campaign"]: r for r in incrementality(serves, purchases, LINE_ITEMS, charges, ITEMS, 7)}


def test_the_report_recovers_a_true_lift_and_calls_no_lift_insignificant():
    serves, purchases, charges = simulate()
    rows = report(serves, purchases, charges)
    a, b = rows["a"], rows["b"]
    assert 1_600 <= a["holdout_users"] <= 2_400 and a["exposed_users"] + a["holdout_users"] == 20_000
    # The conversion rates themselves: purchases outside the exposure window would move both.
    assert abs(a["exposed_conversion_rate"] - (BASE + TRUTH["a"])) < 0.006
    assert abs(a["holdout_conversion_rate"] - BASE) < 0.012 and abs(b["exposed_conversion_rate"] - BASE) < 0.006
    assert a["lift_low"] <= TRUTH["a"] <= a["lift_high"] and a["significant"] and a["p_value"] < 0.001
    assert b["lift_low"] <= 0 <= b["lift_high"] and not b["significant"] and b["p_value"] > 0.05
    expected = TRUTH["a"] * a["exposed_users"]  # one purchase per converting user here
    assert abs(a["incremental_conversions"] - expected) < 0.5 * expected
    assert a["incremental_revenue_low"] <= a["incremental_revenue"] <= a["incremental_revenue_high"]
    exposed_spend = sum(c["price"] for c in charges if c["line_item"] == "a-li") / 1e6
    assert a["exposed_spend"] == pytest.approx(exposed_spend) and a["iroas_low"] > 0
    assert a["iroas"] == pytest.approx(a["incremental_revenue"] / exposed_spend, abs=1e-3)
    assert b["iroas_low"] < 0 < b["iroas_high"]


def test_over_many_seeds_the_interval_covers_the_truth_and_nothing_fails():
    covered, false_alarms = 0, 0
    for seed in range(12):
        rows = report(*simulate(users=3_000, seed=seed))
        covered += rows["a"]["lift_low"] <= TRUTH["a"] <= rows["a"]["lift_high"]
        false_alarms += rows["b"]["significant"]
    assert covered >= 10 and false_alarms <= 2  # 95% intervals: about 11.4 of 12, and 0.6


def test_no_purchase_at_all_and_too_few_users_give_an_answer_not_an_error():
    serves, _, charges = simulate(users=2_000)
    quiet = report(serves, [], charges)["a"]
    assert quiet["lift"] == 0 and quiet["lift_low"] < 0 < quiet["lift_high"] and not quiet["significant"]
    few = report(*simulate(users=60))["a"]
    assert few["lift"] is None and not few["significant"] and "too few users" in few["note"]


def test_a_user_both_shown_and_held_out_is_in_neither_group():
    serves, purchases, charges = simulate(users=2_000)
    held = next(s for s in serves if s["ghost"] and s["campaign"] == "a")
    serves.append({**held, "ghost": False, "ts": held["ts"] + 10})  # shown through another line item
    row = report(serves, purchases, charges)["a"]
    assert row["excluded_users"] == 1 and row["exposed_users"] + row["holdout_users"] == 1_999


def test_the_holdout_draw_is_stable_and_close_to_its_share():
    users = [f"user-{n}" for n in range(20_000)]
    share = sum(held_out("spring", u, 0.1) for u in users) / len(users)
    assert 0.09 < share < 0.11
    assert [held_out("spring", u, 0.1) for u in users[:50]] == [held_out("spring", u, 0.1) for u in users[:50]]
    assert not any(held_out("spring", u, 0.0) for u in users[:100])
    other = sum(held_out("spring", u, 0.1) and held_out("summer", u, 0.1) for u in users) / len(users)
    assert other < 0.02  # campaigns draw independently
