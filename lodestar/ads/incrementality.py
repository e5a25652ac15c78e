"""Incrementality: what a campaign's ads caused, measured against the users it held out.

Each campaign holds out a deterministic share of known users (its line items' ``holdout``, default
10%): a SHA-256 hash of campaign and user picks them, so a user stays in or out of a campaign across
requests and processes. For them the auction still runs; when one of the campaign's ads wins, the
slot goes to the organic list and the ad is recorded as a **ghost** (what they would have seen).
Both groups are thus the users the campaign's ads *would* reach (ghost ads, Johnson, Lewis and
Nubbemeyer 2017), which makes them comparable.

Per campaign: the exposed users (served at least one of its ads) and the held-out users (at least
one ghost); a user with both (its line items hold out different shares) is in neither and is
counted apart (``excluded_users``). Each user's outcome counts from their first (ghost) exposure,
over ``attribution_days``: their purchases of the campaign's products, and that revenue.

* ``lift``: the difference of the groups' conversion rates (users with a purchase), with its 95%
  Newcombe interval (statsmodels ``confint_proportions_2indep``: closed form, sound at 0% and 100%)
  and a p-value (``test_proportions_2indep``, Agresti-Caffo); ``significant``: the interval
  excludes 0;
* ``incremental_conversions``: the difference of mean purchases per user, times the exposed users;
* ``incremental_revenue``: the difference of mean revenue per user (Welch's interval, statsmodels
  ``CompareMeans``), times the exposed users;
* ``iroas``: incremental revenue over ``exposed_spend`` (what the exposed users' clicks cost; the
  campaign's whole ``spend`` also counts anonymous requests), with the interval scaled the same way.

Ads shown to a held-out user on a request without their user id cannot be held back (nobody knows
who it is); such exposure makes the measured lift smaller, never larger.
statsmodels is the kept library the experiments already use; these are its textbook estimators.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from lodestar.ads.money import MICROS, revenue_of

BUCKETS = 10_000
DAY_S = 86400
ALPHA = 0.05
MIN_USERS = 20  # per group, before any interval is given


def held_out(campaign: str, user_id: str, share: float) -> bool:
    """Whether the campaign (:func:`campaign_key`) holds this user out (a stable, per-campaign draw)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"holdout\x00{campaign}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS < round(share * BUCKETS)


def campaign_key(advertiser: str, campaign: str) -> str:
    """A campaign's name in the holdout draw (advertisers may name campaigns alike)."""
    return f"{advertiser}/{campaign}"


def incrementality(serves: Iterable[dict[str, Any]], purchases: Iterable[dict[str, Any]],
                   line_items: dict[str, dict[str, Any]], charges: Iterable[dict[str, Any]],
                   items: dict[str, dict[str, Any]], attribution_days: int) -> list[dict[str, Any]]:
    """One row per campaign with exposed and held-out users, conversion rates, the lift with its
    interval and p-value, incremental conversions and revenue, spend and iROAS with its interval.
    ``charges``: the ledger's (the spend on the exposed users is iROAS's denominator)."""
    first: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # (advertiser, campaign) -> user -> t0
    seen: dict[tuple[str, str], dict[str, set[bool]]] = defaultdict(lambda: defaultdict(set))
    for serve in sorted(serves, key=lambda s: s["ts"]):
        if serve["user_id"] is None:  # an anonymous request: nobody to follow up
            continue
        key = (serve["advertiser"], serve["campaign"])
        first[key].setdefault(serve["user_id"], serve["ts"])
        seen[key][serve["user_id"]].add(bool(serve["ghost"]))
    products: dict[tuple[str, str], set[str]] = defaultdict(set)
    campaign_of: dict[str, tuple[str, str]] = {}
    for ident, record in line_items.items():
        key = (record["advertiser"], record.get("campaign", ident))
        products[key].update(record["products"])
        campaign_of[ident] = key
    spent: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))  # campaign -> user -> micros
    for charge in charges:
        if charge["line_item"] in campaign_of:
            spent[campaign_of[charge["line_item"]]][charge["user_id"]] += int(charge["price"])
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in purchases:
        by_user[event["user_id"]].append(event)
    window = attribution_days * DAY_S
    rows = []
    for key in sorted(first):
        advertiser, campaign = key
        groups: dict[bool, Group] = {True: Group(), False: Group()}  # exposed?
        mixed = 0
        for user, t0 in first[key].items():
            kinds = seen[key][user]
            if len(kinds) > 1:  # both shown and held out (line items of unequal holdouts): in neither group
                mixed += 1
                continue
            exposed = kinds == {False}
            mine = [e for e in by_user.get(user, ()) if e["item_id"] in products[key] and t0 <= e["ts"] <= t0 + window]
            groups[exposed].add(len(mine), sum(revenue_of(e, items.get(e["item_id"])) for e in mine))
        exposed_users = {u for u, kinds in seen[key].items() if kinds == {False}}
        exposed_spend = sum(v for u, v in spent[key].items() if u in exposed_users) / MICROS
        rows.append(_row(advertiser, campaign, groups, sum(spent[key].values()) / MICROS, exposed_spend, mixed))
    return rows


class Group:
    """One side of the comparison: per user, how many purchases and how much revenue."""

    def __init__(self) -> None:
        self.purchases: list[int] = []
        self.revenue: list[float] = []

    def add(self, purchases: int, revenue: float) -> None:
        self.purchases.append(purchases)
        self.revenue.append(revenue)

    @property
    def users(self) -> int:
        return len(self.purchases)

    @property
    def converted(self) -> int:
        return sum(1 for p in self.purchases if p)


def _row(advertiser: str, campaign: str, groups: dict[bool, Group], spend: float, exposed_spend: float,
         mixed: int) -> dict[str, Any]:
    t, c = groups[True], groups[False]
    row: dict[str, Any] = {
        "advertiser": advertiser, "campaign": campaign, "exposed_users": t.users, "holdout_users": c.users,
        "excluded_users": mixed,
        "exposed_conversion_rate": round(t.converted / t.users, 6) if t.users else None,
        "holdout_conversion_rate": round(c.converted / c.users, 6) if c.users else None,
        "spend": round(spend, 6), "exposed_spend": round(exposed_spend, 6), "lift": None, "lift_low": None,
        "lift_high": None, "p_value": None, "significant": False, "incremental_conversions": None,
        "incremental_revenue": None, "incremental_revenue_low": None, "incremental_revenue_high": None,
        "iroas": None, "iroas_low": None, "iroas_high": None,
    }
    if t.users < MIN_USERS or c.users < MIN_USERS:
        row["note"] = f"too few users to measure (at least {MIN_USERS} exposed and {MIN_USERS} held out)"
        return row
    # Imported here: serving processes use this module's holdout draw only, and need not hold
    # statsmodels (and what it imports) in memory.
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        test_proportions_2indep,
    )
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint_proportions_2indep(t.converted, t.users, c.converted, c.users, method="newcomb",
                                               compare="diff", alpha=ALPHA)
        p_value = test_proportions_2indep(t.converted, t.users, c.converted, c.users, method="agresti-caffo",
                                          compare="diff").pvalue
    lift = t.converted / t.users - c.converted / c.users
    extra_purchases = float(np.mean(t.purchases) - np.mean(c.purchases))
    revenue_t, revenue_c = np.asarray(t.revenue), np.asarray(c.revenue)
    per_user = float(revenue_t.mean() - revenue_c.mean())
    if revenue_t.std() > 0 or revenue_c.std() > 0:
        rev_low, rev_high = CompareMeans(DescrStatsW(revenue_t), DescrStatsW(revenue_c)).tconfint_diff(
            alpha=ALPHA, usevar="unequal")
    else:
        rev_low = rev_high = per_user
    row.update({
        "lift": round(lift, 6), "lift_low": round(float(low), 6), "lift_high": round(float(high), 6),
        "p_value": round(float(p_value), 6), "significant": bool(low > 0 or high < 0),
        "incremental_conversions": round(extra_purchases * t.users, 2),
        "incremental_revenue": round(per_user * t.users, 2),
        "incremental_revenue_low": round(float(rev_low) * t.users, 2),
        "incremental_revenue_high": round(float(rev_high) * t.users, 2),
    })
    if exposed_spend > 0:
        row.update({"iroas": round(per_user * t.users / exposed_spend, 4),
                    "iroas_low": round(float(rev_low) * t.users / exposed_spend, 4),
                    "iroas_high": round(float(rev_high) * t.users / exposed_spend, 4)})
    return row
