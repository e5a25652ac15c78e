"""What the ads did, per line item and UTC day: impressions and clicks (events carrying an
``ad_id``), charged clicks and spend (the ledger), conversions and revenue attributed to the ads, ROAS.

Attribution is last click: a conversion (a ``purchase`` event) belongs to the user's latest charged
ad click before it, within ``attribution_days``, on the same product (or, per the tenant's
``attribution_scope``, a product of the same brand, or sharing a category). Without such a click,
and with ``view_through_days`` above 0, it belongs to the user's latest ad impression within that
window under the same rule (counted apart: ``view_conversions``). Its revenue is the event's value
(a purchase's amount), else the product's ``price`` attribute, else 0. Each conversion is counted
once, for one line item.

Also the traffic curve pacing follows: served lists per hour of day (UTC) over the last 14 days.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from lodestar.ads.money import MICROS
from lodestar.ads.tokens import ServedAd
from lodestar.tenant_config import AdsSettings

REPORT = "ads"  # the stored report's name (CDP ``put_report``)
INCREMENTALITY_REPORT = "ads_incrementality"
TRAFFIC_REPORT = "traffic_curve"
DAY_S = 86400
COLUMNS = ("day", "advertiser", "line_item", "impressions", "clicks", "charged_clicks", "spend", "conversions",
           "view_conversions", "revenue", "roas")


def _day(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%d")


def _key_of(scope: str, item: dict[str, Any] | None) -> frozenset[str]:
    """What a conversion must share with the advertised product (by ``scope``)."""
    if item is None:
        return frozenset()
    if scope == "brand":
        brand = (item.get("attributes") or {}).get("brand")
        return frozenset([str(brand).lower()]) if brand else frozenset()
    if scope == "category":
        return frozenset(item.get("categories") or ())
    return frozenset([item["id"]])


def _revenue(event: dict[str, Any], item: dict[str, Any] | None) -> float:
    value = event.get("value")
    if value is not None and not pd.isna(value) and value > 0:
        return float(value)
    price = ((item or {}).get("attributes") or {}).get("price")
    return float(price) if isinstance(price, (int, float)) and price > 0 else 0.0


def ads_report(charges: list[dict[str, Any]], events: Iterable[dict[str, Any]], items: dict[str, dict[str, Any]],
               line_items: dict[str, dict[str, Any]], settings: AdsSettings,
               open_ad: Callable[[str], ServedAd | None]) -> list[dict[str, Any]]:
    """Rows of :data:`COLUMNS`, by day, advertiser and line item (spend and revenue in currency
    units; ``roas`` is revenue over spend, ``None`` without spend); ``open_ad`` reads an ad id
    (:func:`lodestar.ads.tokens.open_ad_id` with the deployment's secret and the tenant)."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row(day: str, line_item: str) -> dict[str, Any]:
        advertiser = (line_items.get(line_item) or {}).get("advertiser", "")
        key = (day, advertiser, line_item)
        if key not in rows:
            rows[key] = {"day": day, "advertiser": advertiser, "line_item": line_item, "impressions": 0, "clicks": 0,
                         "charged_clicks": 0, "spend": 0, "conversions": 0, "view_conversions": 0, "revenue": 0.0}
        return rows[key]

    for charge in charges:
        target = row(charge["day"], charge["line_item"])
        target["charged_clicks"] += 1
        target["spend"] += int(charge["price"])
    clicks_by_user: dict[str, list[tuple[float, str, frozenset[str]]]] = defaultdict(list)
    for charge in charges:
        product = items.get(charge["product"]) if charge.get("product") else None
        clicks_by_user[charge["user_id"]].append((charge["ts"], charge["line_item"],
                                                  _key_of(settings.attribution_scope, product)))
    views_by_user: dict[str, list[tuple[float, str, frozenset[str]]]] = defaultdict(list)
    conversions = []
    for event in events:
        ad_id = event.get("ad_id")
        ad = open_ad(ad_id) if isinstance(ad_id, str) and ad_id else None  # NaN in a frame
        if ad is not None and event["type"] in ("impression", "click"):
            row(_day(event["ts"]), ad.line_item)["impressions" if event["type"] == "impression" else "clicks"] += 1
            if event["type"] == "impression":
                product = (line_items.get(ad.line_item) or {}).get("products", [])
                product_id = product[ad.product_index] if ad.product_index < len(product) else None
                views_by_user[event["user_id"]].append((event["ts"], ad.line_item,
                                                        _key_of(settings.attribution_scope, items.get(product_id))))
        if event["type"] == "purchase":
            conversions.append(event)
    for touches in (*clicks_by_user.values(), *views_by_user.values()):
        touches.sort(key=lambda t: t[0])
    windows = (("conversions", clicks_by_user, settings.attribution_days * DAY_S),
               ("view_conversions", views_by_user, settings.view_through_days * DAY_S))
    for event in conversions:
        item = items.get(event["item_id"])
        wanted = _key_of(settings.attribution_scope, item)
        for column, touches_by_user, window in windows:
            touches = touches_by_user.get(event["user_id"], [])
            if window <= 0 or not touches or not wanted:
                continue
            end = bisect.bisect_right(touches, event["ts"], key=lambda t: t[0])
            match = next((t for t in reversed(touches[:end]) if t[0] >= event["ts"] - window and t[2] & wanted), None)
            if match is not None:
                target = row(_day(event["ts"]), match[1])
                target[column] += 1
                target["revenue"] += _revenue(event, item)
                break
    out = []
    for key in sorted(rows):
        r = rows[key]
        spend = r["spend"] / MICROS
        out.append({**r, "spend": round(spend, 6), "revenue": round(r["revenue"], 2),
                    "roas": round(r["revenue"] / spend, 4) if spend > 0 else None})
    return out


def traffic_curve(served: Iterable[dict[str, Any]], now: float, days: int = 14) -> list[dict[str, int]]:
    """Served lists per hour of day (UTC) over the last ``days``: 24 rows ``{"hour", "lists"}``."""
    counts = [0] * 24
    since = now - days * DAY_S
    for entry in served:
        if entry["ts"] >= since:
            counts[int(entry["ts"] % DAY_S // 3600)] += 1
    return [{"hour": h, "lists": n} for h, n in enumerate(counts)]


def total_spend(store: Any, tenant: str) -> dict[str, int]:
    """Each line item's spend so far (micros), from the ledger."""
    today = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")
    return {li: spend["spent_total"] for li, spend in store.ad_spend_all(tenant, today).items()}


def report_from_store(store: Any, tenant: str, secret: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`ads_report` and the campaigns' incrementality read straight from the CDP store (the
    pipeline's ``ads_report`` asset reads its extracts instead)."""
    from lodestar.ads.incrementality import incrementality
    from lodestar.ads.tokens import open_ad_id
    from lodestar.cdp import require_tenant
    from lodestar.tenant_config import effective_config

    settings = effective_config(require_tenant(store, tenant)["config"]).ads
    line_items = {r["id"]: r for r in store.list_line_items(tenant)}
    if not line_items:
        return [], []
    items = {i["id"]: i for batch in store.read_changes(tenant, "items") for i in batch}
    events = [e for batch in store.read_changes(tenant, "events") for e in batch
              if e.get("ad_id") or e["type"] == "purchase"]
    rows = ads_report(store.ad_charges(tenant), events, items, line_items, settings,
                      lambda ad_id: open_ad_id(secret, tenant, ad_id))
    lifts = incrementality(store.read_ad_serves(tenant), [e for e in events if e["type"] == "purchase"], line_items,
                           total_spend(store, tenant), items, settings.attribution_days)
    return rows, lifts
