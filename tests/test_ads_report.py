"""The ads report with planted truth: conversions go to the user's latest charged ad click within the
window (same product, brand or category by setting), view-through only when turned on, each
conversion once; ad ids are signed and unforgeable; the traffic curve counts lists by hour."""

from __future__ import annotations

import dataclasses

import pytest

from lodestar.ads.report import ads_report, traffic_curve
from lodestar.ads.tokens import ServedAd, make_ad_id, open_ad_id, read_ad_id
from lodestar.errors import InvalidInput
from lodestar.tenant_config import AdsSettings

DAY = 86400
SECRET = "s" * 64
T0 = 1_794_960_000.0  # 2026-11-18 00:00 UTC
ITEMS = {
    "boot": {"id": "boot", "categories": ["shoes"], "attributes": {"brand": "Kestrel", "price": 80.0}},
    "sock": {"id": "sock", "categories": ["shoes"], "attributes": {"brand": "Kestrel", "price": 5.0}},
    "mug": {"id": "mug", "categories": ["kitchen"], "attributes": {"brand": "Acme", "price": 12.0}},
}
LINE_ITEMS = {"li-boot": {"id": "li-boot", "advertiser": "kestrel", "products": ["boot"]},
              "li-mug": {"id": "li-mug", "advertiser": "acme", "products": ["mug"]}}


def charge(ad, line_item, product, user, ts, price=300_000):
    return {"ad_id": ad, "line_item": line_item, "advertiser": LINE_ITEMS[line_item]["advertiser"], "product": product,
            "user_id": user, "price": price, "day": "2026-11-18", "ts": ts}


def purchase(user, item, ts, value=None):
    return {"user_id": user, "item_id": item, "type": "purchase", "ts": ts, "value": value, "ad_id": None}


def report(charges, events, **settings):
    rows = ads_report(charges, events, ITEMS, LINE_ITEMS, dataclasses.replace(AdsSettings(), **settings),
                      lambda ad_id: open_ad_id(SECRET, "shop", ad_id))
    return {(r["line_item"], r["day"]): r for r in rows}


def test_a_conversion_goes_to_the_latest_click_within_the_window_once():
    charges = [charge("a1", "li-boot", "boot", "u1", T0), charge("a2", "li-boot", "boot", "u1", T0 + 60),
               charge("a3", "li-mug", "mug", "u2", T0)]
    events = [purchase("u1", "boot", T0 + 3600, value=79.0),  # after both clicks: one conversion
              purchase("u1", "boot", T0 + 8 * DAY),  # outside 7 days: none
              purchase("u2", "boot", T0 + 10),  # u2 clicked the mug, not the boot: none (product scope)
              purchase("u3", "mug", T0 + 10)]  # never clicked: none
    rows = report(charges, events)
    boot = rows[("li-boot", "2026-11-18")]
    assert (boot["charged_clicks"], boot["spend"], boot["conversions"], boot["revenue"]) == (2, 0.6, 1, 79.0)
    assert boot["roas"] == round(79.0 / 0.6, 4)
    assert rows[("li-mug", "2026-11-18")]["conversions"] == 0 and rows[("li-mug", "2026-11-18")]["roas"] == 0.0
    assert sum(r["conversions"] for r in rows.values()) == 1


def test_brand_and_category_scopes_and_the_price_as_revenue():
    charges = [charge("a1", "li-boot", "boot", "u1", T0)]
    events = [purchase("u1", "sock", T0 + 100)]  # same brand and category, not the same product
    assert report(charges, events)[("li-boot", "2026-11-18")]["conversions"] == 0
    by_brand = report(charges, events, attribution_scope="brand")[("li-boot", "2026-11-18")]
    assert (by_brand["conversions"], by_brand["revenue"]) == (1, 5.0)  # no value: the product's price
    assert report(charges, events, attribution_scope="category")[("li-boot", "2026-11-18")]["conversions"] == 1
    assert report(charges, [purchase("u1", "mug", T0 + 100)], attribution_scope="category")[
        ("li-boot", "2026-11-18")]["conversions"] == 0


def test_view_through_only_when_turned_on_and_clicks_first():
    seen = make_ad_id(SECRET, "shop", ServedAd("li-mug", 0, 200_000, int(T0), "recommendations"))
    impression = {"user_id": "u5", "item_id": "mug", "type": "impression", "ts": T0, "value": None, "ad_id": seen}
    events = [impression, purchase("u5", "mug", T0 + DAY)]
    off = report([], events)[("li-mug", "2026-11-18")]
    assert (off["impressions"], off["conversions"], off["view_conversions"]) == (1, 0, 0)
    on = report([], events, view_through_days=2)
    assert on[("li-mug", "2026-11-19")]["view_conversions"] == 1
    clicked = report([charge("c1", "li-mug", "mug", "u5", T0 + 10)], events, view_through_days=2)
    assert clicked[("li-mug", "2026-11-19")]["conversions"] == 1
    assert clicked[("li-mug", "2026-11-19")]["view_conversions"] == 0  # a click takes it first


def test_ad_ids_are_sealed_per_tenant_unique_and_unreadable_without_the_secret():
    import base64

    ad = ServedAd("li-boot", 0, 350_000, int(T0), "search")
    one, two = make_ad_id(SECRET, "shop", ad), make_ad_id(SECRET, "shop", ad)
    assert one != two and len(one) <= 256 and one.startswith("ad2.")
    assert read_ad_id(SECRET, "shop", one) == ad == open_ad_id(SECRET, "shop", two)
    sealed = base64.urlsafe_b64decode(one[4:] + "=" * (-len(one[4:]) % 4))
    assert b"li-boot" not in sealed and b"350000" not in sealed  # the line item and the price stay private
    flipped = one[:-3] + ("A" if one[-3] != "A" else "B") + one[-2:]
    for forged in (flipped, one.replace("ad2.", "ad1."), "ad2.AAAA", "ad2.", "nonsense", one + "é", "ad2.é"):
        with pytest.raises(InvalidInput, match="not an ad this shop served"):
            read_ad_id(SECRET, "shop", forged)
    with pytest.raises(InvalidInput):
        read_ad_id(SECRET, "other-shop", one)  # another tenant's ad
    with pytest.raises(InvalidInput):
        read_ad_id("another secret", "shop", one)  # another deployment's


def test_the_traffic_curve_counts_recent_lists_by_hour():
    now = T0 + 20 * 3600  # 20:00 UTC
    served = [{"ts": T0 + 9 * 3600 + 5}, {"ts": T0 + 9 * 3600 + 50}, {"ts": T0 + 18 * 3600}, {"ts": T0 - 30 * DAY}]
    curve = traffic_curve(served, now)
    assert len(curve) == 24 and curve[9] == {"hour": 9, "lists": 2} and curve[18]["lists"] == 1
    assert sum(r["lists"] for r in curve) == 3  # the month-old list is out


def test_rows_by_product_and_placement_with_ctr_cpc_and_share_of_voice():
    def served(line_item, product, advertiser, placement, n, ghost=False):
        return [{"user_id": f"s{k}", "line_item": line_item, "campaign": line_item, "advertiser": advertiser,
                 "product": product, "placement": placement, "ghost": ghost, "ts": T0 + k} for k in range(n)]

    serves = (served("li-boot", "boot", "kestrel", "search", 30) + served("li-mug", "mug", "acme", "search", 10)
              + served("li-boot", "boot", "kestrel", "recommendations", 5)
              + served("li-boot", "boot", "kestrel", "search", 50, ghost=True))  # ghosts are no share of voice
    ad = make_ad_id(SECRET, "shop", ServedAd("li-boot", 0, 400_000, int(T0), "search"))
    clicks = [{"user_id": f"s{k}", "item_id": "boot", "type": "click", "ts": T0 + k, "value": None, "ad_id": ad}
              for k in range(3)]
    impressions = [{**c, "type": "impression"} for c in clicks * 4]
    charges = [{**charge(f"c{k}", "li-boot", "boot", f"s{k}", T0 + k, price=400_000), "ad_id": ad} for k in range(2)]
    rows = ads_report(charges, clicks + impressions, ITEMS, LINE_ITEMS, AdsSettings(),
                      lambda ad_id: open_ad_id(SECRET, "shop", ad_id), serves)
    by = {(r["line_item"], r["placement"]): r for r in rows}
    boot = by[("li-boot", "search")]
    assert (boot["product"], boot["campaign"], boot["served"], boot["impressions"], boot["clicks"]) == (
        "boot", "li-boot", 30, 12, 3)
    assert boot["ctr"] == 0.1 and boot["charged_clicks"] == 2  # 3 clicks over 30 ads served and boot["average_cpc"] == 0.4 and boot["spend"] == 0.8
    assert boot["share_of_voice"] == 0.75 and by[("li-mug", "search")]["share_of_voice"] == 0.25
    assert by[("li-boot", "recommendations")]["share_of_voice"] == 1.0
    assert by[("li-mug", "search")]["ctr"] == 0.0  # served, never clicked
    from lodestar.ads.report import totals

    (kestrel,) = [t for t in totals(rows, ("advertiser",)) if t["advertiser"] == "kestrel"]
    assert (kestrel["served"], kestrel["clicks"], kestrel["spend"], kestrel["average_cpc"]) == (35, 3, 0.8, 0.4)
