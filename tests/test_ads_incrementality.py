"""Incrementality with planted truth: simulated users where one campaign's ads truly raise its
products' purchase rate by 3 points and another's do nothing. The report (ghost-ad holdouts,
statsmodels' score interval) must recover the first lift within its interval and call it
significant, and must not call the second significant."""

from __future__ import annotations

import numpy as np

from lodestar.ads.incrementality import held_out, incrementality

T0 = 1_800_000_000.0
LINE_ITEMS = {"a-li": {"advertiser": "alpha", "campaign": "a", "products": ["pa"]},
              "b-li": {"advertiser": "beta", "campaign": "b", "products": ["pb"]}}
ITEMS = {"pa": {"attributes": {"price": 40.0}}, "pb": {"attributes": {"price": 10.0}}}


def simulate(users: int = 20_000, seed: int = 7):
    rng = np.random.default_rng(seed)
    serves, purchases = [], []
    truth = {"a": 0.03, "b": 0.0}
    for n in range(users):
        user = f"u{n}"
        for campaign, product, line in (("a", "pa", "a-li"), ("b", "pb", "b-li")):
            ghost = held_out(campaign, user, 0.10)
            t0 = T0 + rng.uniform(0, 86400)
            serves.append({"user_id": user, "line_item": line, "campaign": campaign,
                           "advertiser": LINE_ITEMS[line]["advertiser"], "product": product,
                           "placement": "recommendations", "ghost": ghost, "ts": t0})
            rate = 0.05 + (0.0 if ghost else truth[campaign])
            if rng.random() < rate:
                purchases.append({"user_id": user, "item_id": product, "type": "purchase", "value": None,
                                  "ts": t0 + rng.uniform(60, 3 * 86400)})
            if rng.random() < 0.02:  # a purchase before the first exposure never counts
                purchases.append({"user_id": user, "item_id": product, "type": "purchase", "value": 40.0,
                                  "ts": t0 - 3600})
    return serves, purchases, truth


def test_the_report_recovers_a_true_lift_and_calls_no_lift_insignificant():
    serves, purchases, truth = simulate()
    rows = {r["campaign"]: r for r in incrementality(serves, purchases, LINE_ITEMS, {"a-li": 600_000_000,
                                                                                    "b-li": 100_000_000},
                                                     ITEMS, attribution_days=7)}
    a, b = rows["a"], rows["b"]
    assert 1_600 <= a["holdout_users"] <= 2_400 and a["exposed_users"] + a["holdout_users"] == 20_000
    assert a["lift_low"] <= truth["a"] <= a["lift_high"] and a["significant"] and a["p_value"] < 0.001
    assert b["lift_low"] <= 0 <= b["lift_high"] and not b["significant"] and b["p_value"] > 0.05
    # Incremental conversions and revenue follow the lift: ~3% of the exposed users, each worth 40.
    assert abs(a["incremental_conversions"] - truth["a"] * a["exposed_users"]) < 0.5 * truth["a"] * a["exposed_users"]
    assert a["incremental_revenue_low"] <= a["incremental_revenue"] <= a["incremental_revenue_high"]
    assert abs(a["iroas"] - a["incremental_revenue"] / 600) < 1e-3 and a["iroas_low"] > 0
    assert b["iroas_low"] < 0 < b["iroas_high"]


def test_too_few_users_give_no_interval_and_say_why():
    serves, purchases, _ = simulate(users=60)
    (a, _) = incrementality(serves, purchases, LINE_ITEMS, {}, ITEMS, attribution_days=7)
    assert a["lift"] is None and not a["significant"] and "too few users" in a["note"]


def test_the_holdout_draw_is_stable_and_close_to_its_share():
    users = [f"user-{n}" for n in range(20_000)]
    share = sum(held_out("spring", u, 0.1) for u in users) / len(users)
    assert 0.09 < share < 0.11
    assert [held_out("spring", u, 0.1) for u in users[:50]] == [held_out("spring", u, 0.1) for u in users[:50]]
    assert not any(held_out("spring", u, 0.0) for u in users[:100])
    other = sum(held_out("spring", u, 0.1) and held_out("summer", u, 0.1) for u in users) / len(users)
    assert other < 0.02  # campaigns draw independently
