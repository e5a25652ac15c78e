"""What the ads did, per advertiser, campaign, line item, product, placement and UTC day: ads served
(the serve log), impressions and clicks (events carrying an ``ad_id``), CTR (clicks over ads served:
the server's complete count; over impressions only where nothing was logged as served), charged clicks,
spend and average CPC (the ledger), conversions and revenue attributed to the ads, ROAS, and the
advertiser's share of voice on the placement that day.

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

from lodestar.ads.money import MICROS, revenue_of
from lodestar.ads.tokens import ServedAd
from lodestar.tenant_config import AdsSettings

REPORT = "ads"  # the stored report's name (CDP ``put_report``)
INCREMENTALITY_REPORT = "ads_incrementality"
TRAFFIC_REPORT = "traffic_curve"
DAY_S = 86400
COLUMNS = ("day", "advertiser", "campaign", "line_item", "product", "placement", "served", "impressions", "clicks",
           "ctr", "charged_clicks", "spend", "average_cpc", "conversions", "view_conversions", "revenue", "roas",
           "share_of_voice")
SUMMED = ("served", "impressions", "clicks", "charged_clicks", "spend", "conversions", "view_conversions", "revenue")


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


def ads_report(charges: list[dict[str, Any]], events: Iterable[dict[str, Any]], items: dict[str, dict[str, Any]],
               line_items: dict[str, dict[str, Any]], settings: AdsSettings,
               open_ad: Callable[[str], ServedAd | None], serves: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Rows of :data:`COLUMNS`, by day, advertiser, campaign, line item, product and placement
    (spend, average CPC and revenue in currency units; ``roas`` is revenue over spend, ``None``
    without spend; ``share_of_voice``: the advertiser's share of the ads served on that placement
    that day). ``open_ad`` reads an ad id (:func:`lodestar.ads.tokens.open_ad_id` with the
    deployment's secret and the tenant); ``serves``: the ad serve log (ghosts are left out)."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}

    def row(day: str, line_item: str, product: str | None, placement: str) -> dict[str, Any]:
        record = line_items.get(line_item) or {}
        advertiser, campaign = record.get("advertiser", ""), record.get("campaign", line_item)
        key = (day, advertiser, campaign, line_item, product or "", placement)
        if key not in rows:
            rows[key] = {"day": day, "advertiser": advertiser, "campaign": campaign, "line_item": line_item,
                         "product": product or "", "placement": placement, "served": 0, "impressions": 0,
                         "clicks": 0, "charged_clicks": 0, "spend": 0, "conversions": 0, "view_conversions": 0,
                         "revenue": 0.0}
        return rows[key]

    def product_of(ad: ServedAd) -> str | None:
        products = (line_items.get(ad.line_item) or {}).get("products", [])
        return products[ad.product_index] if 0 <= ad.product_index < len(products) else None

    voice: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))  # (day, placement)
    for serve in serves:
        if not serve["ghost"]:
            day = _day(serve["ts"])
            row(day, serve["line_item"], serve["product"], serve["placement"])["served"] += 1
            voice[(day, serve["placement"])][serve["advertiser"]] += 1
    clicks_by_user: dict[str, list[tuple[float, tuple[str, str, str], frozenset[str]]]] = defaultdict(list)
    for charge in charges:
        ad = open_ad(charge["ad_id"])
        placement = ad.placement if ad is not None else ""
        target = row(charge["day"], charge["line_item"], charge.get("product"), placement)
        target["charged_clicks"] += 1
        target["spend"] += int(charge["price"])
        product = items.get(charge["product"]) if charge.get("product") else None
        clicks_by_user[charge["user_id"]].append((charge["ts"], (charge["line_item"], charge.get("product"), placement),
                                                  _key_of(settings.attribution_scope, product)))
    views_by_user: dict[str, list[tuple[float, tuple[str, str, str], frozenset[str]]]] = defaultdict(list)
    conversions = []
    for event in events:
        ad_id = event.get("ad_id")
        ad = open_ad(ad_id) if isinstance(ad_id, str) and ad_id else None  # NaN in a frame
        if ad is not None and event["type"] in ("impression", "click"):
            product_id = product_of(ad)
            row(_day(event["ts"]), ad.line_item, product_id, ad.placement)[
                "impressions" if event["type"] == "impression" else "clicks"] += 1
            if event["type"] == "impression":
                views_by_user[event["user_id"]].append((event["ts"], (ad.line_item, product_id, ad.placement),
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
                target = row(_day(event["ts"]), *match[1])
                target[column] += 1
                target["revenue"] += revenue_of(event, item)
                break
    out = []
    for key in sorted(rows):
        r = rows[key]
        spend = r["spend"] / MICROS
        shown = r["served"] or r["impressions"]
        placement_voice = voice.get((r["day"], r["placement"]), {})
        total = sum(placement_voice.values())
        out.append({**r, "spend": round(spend, 6), "revenue": round(r["revenue"], 2),
                    "ctr": round(r["clicks"] / shown, 6) if shown else None,
                    "average_cpc": round(spend / r["charged_clicks"], 6) if r["charged_clicks"] else None,
                    "roas": round(r["revenue"] / spend, 4) if spend > 0 else None,
                    "share_of_voice": round(placement_voice.get(r["advertiser"], 0) / total, 6) if total else None})
    return out


def totals(rows: Iterable[dict[str, Any]], by: tuple[str, ...] = ("advertiser", "line_item")) -> list[dict[str, Any]]:
    """The report's rows summed by ``by`` (rates recomputed from the sums; share of voice, which is
    per placement and day, is not summed)."""
    sums: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = tuple(r[k] for k in by)
        target = sums.setdefault(key, {**{k: r[k] for k in by}, **{c: 0 for c in SUMMED}})
        for column in SUMMED:
            target[column] += r[column]
    out = []
    for key in sorted(sums):
        t = sums[key]
        shown = t["served"] or t["impressions"]
        out.append({**t, "spend": round(t["spend"], 6), "revenue": round(t["revenue"], 2),
                    "ctr": round(t["clicks"] / shown, 6) if shown else None,
                    "average_cpc": round(t["spend"] / t["charged_clicks"], 6) if t["charged_clicks"] else None,
                    "roas": round(t["revenue"] / t["spend"], 4) if t["spend"] > 0 else None})
    return out


def traffic_curve(served: Iterable[dict[str, Any]], now: float, days: int = 14) -> list[dict[str, int]]:
    """Served lists per hour of day (UTC) over the last ``days``: 24 rows ``{"hour", "lists"}``."""
    counts = [0] * 24
    since = now - days * DAY_S
    for entry in served:
        if entry["ts"] >= since:
            counts[int(entry["ts"] % DAY_S // 3600)] += 1
    return [{"hour": h, "lists": n} for h, n in enumerate(counts)]


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
    serves, charges = store.read_ad_serves(tenant), store.ad_charges(tenant)
    rows = ads_report(charges, events, items, line_items, settings,
                      lambda ad_id: open_ad_id(secret, tenant, ad_id), serves)
    lifts = incrementality(serves, [e for e in events if e["type"] == "purchase"], line_items, charges, items,
                           settings.attribution_days)
    return rows, lifts
