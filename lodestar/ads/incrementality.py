"""Incrementality: what a campaign's ads caused, measured against the users it held out.

Each campaign holds out a deterministic share of known users (its line items' ``holdout``, default
10%): a SHA-256 hash of campaign and user picks them, so a user stays in or out of a campaign across
requests and processes. For them the auction still runs; when one of the campaign's ads wins, the
slot goes to the organic list and the ad is recorded as a **ghost** (what they would have seen).
Both groups are thus the users the campaign's ads *would* reach (ghost ads, Johnson, Lewis and
Nubbemeyer 2017), which makes them comparable.

Per campaign: the exposed users (served at least one of its ads) and the held-out users (at least
one ghost); each one's outcome counts from their first (ghost) exposure, over ``attribution_days``:
whether they bought one of the campaign's products, and that revenue. The lift is the difference
of purchase rates, with a 95% score interval (statsmodels ``confint_proportions_2indep``) and the
score test's p-value (``test_proportions_2indep``); incremental
conversions are the lift times the exposed users; incremental revenue uses the difference of mean
revenue per user (Welch's interval, statsmodels ``CompareMeans``); iROAS is incremental revenue
over spend, with the interval scaled the same way. Next to it, last-click ROAS from the ads report.
statsmodels is the kept library the experiments already use; these are its textbook estimators.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    test_proportions_2indep,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from lodestar.ads.money import MICROS

BUCKETS = 10_000
DAY_S = 86400
ALPHA = 0.05
MIN_USERS = 20  # per group, before any interval is given


def held_out(campaign: str, user_id: str, share: float) -> bool:
    """Whether the campaign holds this user out (a stable, per-campaign draw)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"holdout\x00{campaign}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS < round(share * BUCKETS)


def _revenue(event: dict[str, Any], items: dict[str, dict[str, Any]]) -> float:
    value = event.get("value")
    if value is not None and value == value and value > 0:  # NaN != NaN
        return float(value)
    price = ((items.get(event["item_id"]) or {}).get("attributes") or {}).get("price")
    return float(price) if isinstance(price, (int, float)) and price > 0 else 0.0


def incrementality(serves: Iterable[dict[str, Any]], purchases: Iterable[dict[str, Any]],
                   line_items: dict[str, dict[str, Any]], spend_by_line_item: dict[str, int],
                   items: dict[str, dict[str, Any]], attribution_days: int) -> list[dict[str, Any]]:
    """One row per campaign with exposed and held-out users, conversion rates, the lift with its
    interval and p-value, incremental conversions and revenue, spend and iROAS with its interval."""
    first: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # (advertiser, campaign) -> user -> t0
    ghosts: dict[tuple[str, str], set[str]] = defaultdict(set)
    for serve in sorted(serves, key=lambda s: s["ts"]):
        if serve["user_id"] is None:  # an anonymous request: nobody to follow up
            continue
        key = (serve["advertiser"], serve["campaign"])
        first[key].setdefault(serve["user_id"], serve["ts"])
        if serve["ghost"]:
            ghosts[key].add(serve["user_id"])
    products: dict[tuple[str, str], set[str]] = defaultdict(set)
    spend: dict[tuple[str, str], int] = defaultdict(int)
    for ident, record in line_items.items():
        key = (record["advertiser"], record.get("campaign", ident))
        products[key].update(record["products"])
        spend[key] += spend_by_line_item.get(ident, 0)
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in purchases:
        by_user[event["user_id"]].append(event)
    window = attribution_days * DAY_S
    rows = []
    for key in sorted(first):
        advertiser, campaign = key
        held = ghosts[key]
        outcome: dict[bool, list[float]] = {True: [], False: []}  # exposed?, revenue per user
        bought: dict[bool, int] = {True: 0, False: 0}
        for user, t0 in first[key].items():
            exposed = user not in held
            mine = [e for e in by_user.get(user, ()) if e["item_id"] in products[key] and t0 <= e["ts"] <= t0 + window]
            bought[exposed] += bool(mine)
            outcome[exposed].append(sum(_revenue(e, items) for e in mine))
        rows.append(_row(advertiser, campaign, outcome, bought, spend[key] / MICROS))
    return rows


def _row(advertiser: str, campaign: str, outcome: dict[bool, list[float]], bought: dict[bool, int],
         spend: float) -> dict[str, Any]:
    n_t, n_c = len(outcome[True]), len(outcome[False])
    row: dict[str, Any] = {
        "advertiser": advertiser, "campaign": campaign, "exposed_users": n_t, "holdout_users": n_c,
        "exposed_conversion_rate": round(bought[True] / n_t, 6) if n_t else None,
        "holdout_conversion_rate": round(bought[False] / n_c, 6) if n_c else None,
        "spend": round(spend, 6), "lift": None, "lift_low": None, "lift_high": None, "p_value": None,
        "significant": False, "incremental_conversions": None, "incremental_revenue": None,
        "incremental_revenue_low": None, "incremental_revenue_high": None, "iroas": None, "iroas_low": None,
        "iroas_high": None,
    }
    if n_t < MIN_USERS or n_c < MIN_USERS:
        row["note"] = f"too few users to measure (at least {MIN_USERS} exposed and {MIN_USERS} held out)"
        return row
    lift = bought[True] / n_t - bought[False] / n_c
    low, high = confint_proportions_2indep(bought[True], n_t, bought[False], n_c, method="score", compare="diff",
                                           alpha=ALPHA)
    p_value = test_proportions_2indep(bought[True], n_t, bought[False], n_c, method="score", compare="diff").pvalue
    revenue_t, revenue_c = np.asarray(outcome[True]), np.asarray(outcome[False])
    per_user = float(revenue_t.mean() - revenue_c.mean())
    if revenue_t.std() > 0 or revenue_c.std() > 0:
        rev_low, rev_high = CompareMeans(DescrStatsW(revenue_t), DescrStatsW(revenue_c)).tconfint_diff(
            alpha=ALPHA, usevar="unequal")
    else:
        rev_low = rev_high = per_user
    row.update({
        "lift": round(lift, 6), "lift_low": round(float(low), 6), "lift_high": round(float(high), 6),
        "p_value": round(float(p_value), 6), "significant": bool(low > 0 or high < 0),
        "incremental_conversions": round(lift * n_t, 2),
        "incremental_revenue": round(per_user * n_t, 2),
        "incremental_revenue_low": round(float(rev_low) * n_t, 2),
        "incremental_revenue_high": round(float(rev_high) * n_t, 2),
    })
    if spend > 0:
        row.update({"iroas": round(per_user * n_t / spend, 4), "iroas_low": round(float(rev_low) * n_t / spend, 4),
                    "iroas_high": round(float(rev_high) * n_t / spend, 4)})
    return row
