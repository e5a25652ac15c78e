"""Retail media in the serving process: each tenant's market (its live line items over its published
index), kept at most a second behind the CDP store; sponsored items placed in answers; ad clicks
checked and charged.

A tenant with retail media off costs one attribute read per request. On, a request reads nothing
from the store (but a user's latest events when a line item with a frequency cap asks, and the
user's own recommendations read them anyway): the market is refreshed by one background thread of
the process at most once per
``refresh_s`` (the line items when any changed, the spend of all of them in one read, the
participation probabilities of pacing once a minute), so a line item whose budget ran out stops
entering auctions in every process within about a second; the process that charged the click
refreshes at once.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lodestar.ads import bidding, pacing
from lodestar.ads import quality as quality_report
from lodestar.ads.auction import AuctionSettings
from lodestar.ads.market import (
    AdRequest,
    AdsResult,
    LiveLineItem,
    Market,
    Placed,
    ProductTable,
    Signals,
    collab_scale,
)
from lodestar.ads.money import MICROS
from lodestar.ads.quality import QualityModel
from lodestar.ads.report import TRAFFIC_REPORT
from lodestar.ads.tokens import ServedAd, make_ad_id, open_ad_id, read_ad_id
from lodestar.cdp import CdpStore
from lodestar.errors import InvalidInput
from lodestar.filters import ItemFilter
from lodestar.index import Hit, PublishedVersion
from lodestar.tenant_config import AdsSettings, TenantConfig

log = logging.getLogger("lodestar.serving")

CURVE_REFRESH_S = 3600.0
BIDDER_REPORT = "bidder"  # the bidder's multipliers, per goal line item
AD_ID_TTL_S = 86400  # an ad's impressions and clicks count for a day after it was served
DAY_S = 86400


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def auction_settings(ads: AdsSettings) -> AuctionSettings:
    return AuctionSettings(reserve=round(ads.reserve * MICROS), relevance_floor=ads.relevance_floor,
                           positions=tuple(ads.positions), min_audience=ads.audience_min_size,
                           first_price=ads.auction == "first_price")


@dataclass
class _State:
    version: str
    settings: AuctionSettings
    stamp: tuple[int, float]
    line_items: list[LiveLineItem]
    table: ProductTable
    table_key: tuple
    live_key: tuple
    market: Market
    spend: dict[str, dict[str, int]]
    participation: dict[str, float] = field(default_factory=dict)
    paced_at: float = 0.0
    curve: list[float] = field(default_factory=lambda: pacing.traffic_curve([]))
    curve_at: float = float("-inf")
    built_at: float = 0.0  # monotonic
    quality: QualityModel | None = None  # the published ad-quality model
    quality_at: float = float("-inf")
    multipliers: dict[str, float] = field(default_factory=dict)  # the bidder's, per goal line item
    bid_at: float = float("-inf")


class TenantAds:
    def __init__(self, cdp: CdpStore, secret: str, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._cdp = cdp
        self._secret = secret
        self._refresh = refresh_s
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._building: dict[str, threading.Lock] = {}
        self._in_flight: set[str] = set()
        self._queue: queue.Queue[tuple[str, PublishedVersion, AuctionSettings]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._results_cache: dict[str, dict[str, dict[str, float]]] = {}

    # -- the market ----------------------------------------------------------------------------
    def market(self, tenant: str, published: PublishedVersion, ads: AdsSettings) -> Market:
        settings = auction_settings(ads)
        state = self._states.get(tenant)
        if state is None or state.version != published.version or state.settings != settings:
            with self._building_lock(tenant):
                state = self._states.get(tenant)
                if state is None or state.version != published.version or state.settings != settings:
                    state = self._build(tenant, published, settings, state)
            return state.market
        if time.monotonic() - state.built_at >= self._refresh:
            with self._lock:
                start = tenant not in self._in_flight
                self._in_flight.add(tenant)
                if self._worker is None:  # one refresher thread for every tenant (one store connection)
                    self._worker = threading.Thread(target=self._refresher, name="ads-refresh", daemon=True)
                    self._worker.start()
            if start:
                self._queue.put((tenant, published, settings))
        return state.market

    def _refresher(self) -> None:
        while True:
            self._refresh_in_background(*self._queue.get())

    def _building_lock(self, tenant: str) -> threading.Lock:
        with self._lock:
            return self._building.setdefault(tenant, threading.Lock())

    def _refresh_in_background(self, tenant: str, published: PublishedVersion, settings: AuctionSettings) -> None:
        try:
            with self._building_lock(tenant):
                state = self._states.get(tenant)
                if state is not None and state.version == published.version and state.settings == settings:
                    self._build(tenant, published, settings, state)
        except Exception:  # noqa: BLE001 - a failed refresh keeps the last market; the next request retries
            log.exception("could not refresh the ads of tenant %s", tenant)
        finally:
            with self._lock:
                self._in_flight.discard(tenant)

    def _build(self, tenant: str, published: PublishedVersion, settings: AuctionSettings,
               previous: _State | None) -> _State:
        now = self._clock()
        stamp = self._cdp.line_items_stamp(tenant)
        if previous is not None and previous.stamp == stamp:
            line_items = previous.line_items
        else:
            names = {a["id"]: a["name"] for a in self._cdp.list_advertisers(tenant)}
            line_items = [LiveLineItem.of(r, names.get(r["advertiser"], r["advertiser"]))
                          for r in self._cdp.list_line_items(tenant)]
        spend = self._cdp.ad_spend_all(tenant, utc_day(now))
        # The product table covers every active line item's products (spend does not rebuild it).
        if previous is not None and previous.line_items is line_items and previous.version == published.version:
            table_key, table = previous.table_key, previous.table
        else:
            table_key = (published.version, tuple(sorted({p for li in line_items if li.status == "active"
                                                          for p in li.products})))
            table = previous.table if previous is not None and previous.table_key == table_key \
                else ProductTable(published.reader, published.model, table_key[1])
        live = [li for li in line_items if li.state(spend.get(li.id), now) == "active"]
        small: frozenset[str] = frozenset()
        if any(li.segments for li in live):  # an audience that shrank below the minimum is not targeted
            sizes = self._cdp.segment_sizes(tenant)
            small = frozenset(s for li in live for s in li.segments if sizes.get(s, 0) < settings.min_audience)
            live = [li if not li.segments & small else dataclasses.replace(li, segments=li.segments - small)
                    for li in live if not li.segments or li.segments - small]
        # The same line items (objects), the same table and settings: the market's books stand.
        live_key = (id(line_items), id(table), settings, tuple(li.id for li in live), small)
        participation = dict(previous.participation) if previous is not None else {}
        curve, curve_at = (previous.curve, previous.curve_at) if previous is not None else (pacing.traffic_curve([]),
                                                                                             float("-inf"))
        paced_at = previous.paced_at if previous is not None else now
        quality, quality_at = (previous.quality, previous.quality_at) if previous is not None else (None, float("-inf"))
        if now - quality_at >= pacing.STEP_S:  # a newly published ad-quality model applies within a minute
            stored = (self._cdp.get_report(tenant, quality_report.REPORT) or {}).get("rows") or []
            if not stored:
                quality = None
            elif quality is None or stored[0].get("trained_at") != quality.trained_at:  # only a new model reloads
                quality = QualityModel.of(stored[0])
            quality_at = now
        if now - curve_at >= CURVE_REFRESH_S:
            report = self._cdp.get_report(tenant, TRAFFIC_REPORT)
            curve = pacing.traffic_curve([r.get("lists", 0) for r in report["rows"]] if report else [])
            curve_at = now
        if now - paced_at >= pacing.STEP_S:
            share = pacing.expected_share(curve, now % DAY_S)
            for li in live:
                if li.goal is not None:  # the bidder paces a goal line item by its bid: one controller, not two
                    participation[li.id] = 1.0
                    continue
                spent = (spend.get(li.id) or {}).get("spent_today", 0)
                participation[li.id] = pacing.next_participation(participation.get(li.id, 1.0), spent,
                                                                 li.daily_budget, share)
            paced_at = now
        if previous is not None and previous.live_key == live_key:
            market = previous.market
            market.set_participation(participation)
            if quality is not previous.quality:
                market.set_quality(quality)
        else:
            market = Market(live, table, settings, participation, quality)
        multipliers = dict(previous.multipliers) if previous is not None else self._saved_multipliers(tenant)
        bid_at = previous.bid_at if previous is not None else float("-inf")
        goals = [li for li in live if li.goal is not None]
        if goals:
            if now - bid_at >= bidding.STEP_S:
                multipliers = self._bidder_step(tenant, goals, multipliers, spend, curve, now, table)
                self._cdp.put_report(tenant, BIDDER_REPORT, [{"line_item": k, "multiplier": v, "at": now}
                                                            for k, v in sorted(multipliers.items())])
                bid_at = now
            market.set_bids(self._goal_bids(tenant, goals, multipliers, table))
        state = _State(published.version, settings, stamp, line_items, table, table_key, live_key, market, spend,
                       participation, paced_at, curve, curve_at, time.monotonic(), quality, quality_at,
                       multipliers, bid_at)
        self._states[tenant] = state
        return state

    def _saved_multipliers(self, tenant: str) -> dict[str, float]:
        """The bidder's multipliers as last saved (a restart resumes them, and every process shares
        the latest step's)."""
        return {r["line_item"]: float(r["multiplier"])
                for r in (self._cdp.get_report(tenant, BIDDER_REPORT) or {}).get("rows", [])}

    def _results(self, tenant: str) -> dict[str, dict[str, float]]:
        """Per line item: charged clicks and spend (the ledger) up to when the pipeline's ads report
        was computed, and the attributed conversions and revenue of that report: clicks whose
        conversions the report could not have seen yet do not count against the goal."""
        report = self._cdp.get_report(tenant, "ads") or {}
        cutoff = report.get("updated_at") or 0.0
        out: dict[str, dict[str, float]] = {}
        for charge in self._cdp.ad_charges(tenant):
            if charge["ts"] > cutoff:
                continue
            row = out.setdefault(charge["line_item"], {"clicks": 0, "spend": 0.0, "conversions": 0, "revenue": 0.0})
            row["clicks"] += 1
            row["spend"] += charge["price"] / MICROS
        for r in report.get("rows", []):
            row = out.setdefault(r["line_item"], {"clicks": 0, "spend": 0.0, "conversions": 0, "revenue": 0.0})
            row["conversions"] += r.get("conversions", 0)
            row["revenue"] += r.get("revenue", 0.0)
        return out

    def _value(self, li: LiveLineItem, result: dict[str, float], table: ProductTable) -> tuple[float, float]:
        """A click's conversion rate and a conversion's value for the bidder: the line item's own,
        smoothed toward 5% and its products' mean price."""
        prices = [float(table.price[table.row[x]]) for x in li.products if x in table.row and table.price[table.row[x]] > 0]
        price = sum(prices) / len(prices) if prices else 1.0
        pcvr = (result.get("conversions", 0) + 0.05 * 20) / (result.get("clicks", 0) + 20)
        value = result["revenue"] / result["conversions"] if result.get("conversions") else price
        return pcvr, value

    def _bidder_step(self, tenant: str, goals: list[LiveLineItem], multipliers: dict[str, float],
                     spend: dict[str, dict[str, int]], curve: list[float], now: float,
                     table: ProductTable) -> dict[str, float]:
        """The bidder's hourly step (lodestar.ads.bidding): each goal line item's multiplier from its
        results so far and today's pace."""
        results = self._results(tenant)
        self._results_cache[tenant] = results
        share = pacing.expected_share(curve, now % DAY_S)
        out = dict(multipliers)
        for li in goals:
            result = results.get(li.id, {"clicks": 0, "spend": 0.0, "conversions": 0, "revenue": 0.0})
            today = (spend.get(li.id) or {}).get("spent_today", 0) / MICROS
            pcvr, value = self._value(li, result, table)
            out[li.id] = bidding.next_multiplier(
                li.goal, multipliers.get(li.id, 1.0), spend=result["spend"], clicks=result["clicks"],
                conversions=result["conversions"], revenue=result["revenue"],
                pace_error=(share * li.daily_budget / MICROS - today) / (li.daily_budget / MICROS),
                predicted_conversions=result["clicks"] * pcvr, predicted_revenue=result["clicks"] * pcvr * value)
        return out

    def _goal_bids(self, tenant: str, goals: list[LiveLineItem], multipliers: dict[str, float],
                   table: ProductTable) -> dict[str, int]:
        results = self._results_cache.get(tenant)
        bids = {}
        for li in goals:
            pcvr, value = self._value(li, (results or {}).get(li.id, {}), table)
            bids[li.id] = bidding.auction_bid(li.goal, multipliers.get(li.id, 1.0), pcvr, value)
        return bids

    def stale(self, tenant: str) -> None:
        """Refresh the tenant's market at its next request (a click was just charged here)."""
        state = self._states.get(tenant)
        if state is not None:
            state.built_at = float("-inf")

    # -- serving -------------------------------------------------------------------------------
    def _rng(self) -> np.random.Generator:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = np.random.default_rng()
        return rng

    def place(self, tenant: str, published: PublishedVersion, config: TenantConfig, request: AdRequest,
              explain: bool = False) -> AdsResult | None:
        """The answer with its sponsored items, or ``None`` when the tenant has retail media off."""
        if not config.ads.enabled:
            return None
        market = self.market(tenant, published, config.ads)
        if not market:
            return AdsResult(list(request.organic)[:request.k], [],
                             {"auction": "no line item can take part now: each is paused, scheduled, ended or out of budget "
                                           "(the Retail media page says which)"} if explain else None)
        request.open_ad = lambda ad_id: open_ad_id(self._secret, tenant, ad_id)
        return market.serve(request, self._rng(), explain)

    def ad_id(self, tenant: str, placed: Any, placement: str, now: float) -> str:
        return make_ad_id(self._secret, tenant, ServedAd(placed.line_item.id, placed.product_index, placed.price,
                                                         int(now), placement))

    # -- events --------------------------------------------------------------------------------
    def check(self, tenant: str, event: dict[str, Any], now: float) -> tuple[ServedAd, dict[str, Any]]:
        """The served ad and its line item an event's ``ad_id`` names; :class:`InvalidInput` when
        the shop never served it, it is for another product (impressions and clicks), or it was
        served more than :data:`AD_ID_TTL_S` ago (a click on it is no longer charged)."""
        ad = read_ad_id(self._secret, tenant, event["ad_id"])
        record = self._cdp.get_line_item(tenant, ad.line_item)
        if record is None or not 0 <= ad.product_index < len(record["products"]):
            raise InvalidInput("ad_id: its line item no longer exists", field="ad_id")
        product = record["products"][ad.product_index]
        if event["type"] in ("click", "impression") and event["item_id"] != product:
            raise InvalidInput(f"ad_id: the ad was for item {product!r}, not {event['item_id']!r}", field="ad_id")
        if now - ad.served_at > AD_ID_TTL_S:
            raise InvalidInput(f"ad_id: served more than {AD_ID_TTL_S // 3600} hours ago; an ad's impressions and "
                               "clicks count for a day", field="ad_id")
        return ad, record

    def open(self, tenant: str, ad_id: str) -> ServedAd | None:
        return open_ad_id(self._secret, tenant, ad_id)

    def charge(self, tenant: str, event: dict[str, Any], ad: ServedAd, record: dict[str, Any], ads: AdsSettings,
               now: float) -> dict[str, Any]:
        """Charge a click on a served ad in the ledger (once; a repeat within the click window is
        one click; never past the budget by more than this click's price)."""
        result = self._cdp.charge_click(tenant, {
            "ad_id": event["ad_id"], "line_item": record["id"], "advertiser": record["advertiser"],
            "product": record["products"][ad.product_index], "user_id": event["user_id"], "price": ad.price,
            "day": utc_day(now), "ts": now}, int(record["daily_budget"]), int(record["total_budget"]),
            float(ads.click_window_s))
        if result["charged"]:
            self.stale(tenant)
        return result


def request_for(
    placement: str, k: int, organic: Sequence[Hit], signals: Signals, exclude: frozenset[str] = frozenset(),
    item_filter: ItemFilter | None = None, query: str | None = None, categories: frozenset[str] = frozenset(),
    events: Sequence[dict[str, Any]] | Callable[[], Sequence[dict[str, Any]]] = (), now: float | None = None,
    segments: Callable[[], Iterable[str]] | frozenset[str] = frozenset(), user_id: str | None = None,
) -> AdRequest:
    return AdRequest(placement, k, organic, signals, exclude, item_filter or ItemFilter(), query, categories, events,
                     time.time() if now is None else now, segments=segments, user_id=user_id)


def recommendation_signals(config: TenantConfig, published: PublishedVersion, taste: np.ndarray | None,
                           collab_query: np.ndarray | None, organic: Sequence[Hit]) -> Signals:
    """The signals a user's (or session's) organic list was ranked by, for its sponsored items."""
    if collab_query is None:
        return Signals(content=taste)
    return Signals(content=taste, collab=collab_query, collab_scale=collab_scale(published.model, collab_query, organic),
                   collab_weight=config.ranking.collab, content_weight=config.ranking.content if taste is not None
                   else 0.0)


@dataclass
class Sponsored:
    """An answer with its sponsored items in place (``explanation``: the auction, when asked)."""

    ads: TenantAds
    items: list[Hit | Placed]
    explanation: dict[str, Any] | None
    placed: list[Placed] = field(default_factory=list)
    ghosts: list[Placed] = field(default_factory=list)  # ads a held-out user would have been shown

    def serves(self, user_id: str | None, placement: str, now: float,
               ad_ids: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """The served ads and ghosts as the ad serve log keeps them (incrementality; and, with each
        one's ad id, position, relevance, bid and price, what the ad-quality model learns from)."""
        ad_ids = ad_ids or {}
        return [{"user_id": user_id, "line_item": ad.line_item.id, "campaign": ad.line_item.campaign,
                 "advertiser": ad.line_item.advertiser, "product": ad.product, "placement": placement,
                 "ghost": ghost, "ts": now, "ad_id": None if ghost else ad_ids.get(id(ad)), "position": ad.position,
                 "relevance": round(ad.relevance, 6), "bid": ad.bid, "price": ad.price}
                for ads, ghost in ((self.placed, False), (self.ghosts, True)) for ad in ads]


def sponsored_answer(
    ads: TenantAds, tenant: str, published: PublishedVersion, config: TenantConfig, placement: str, k: int,
    hits: list[Hit], signals: Signals, explain: bool, *, exclude: frozenset[str] = frozenset(),
    item_filter: ItemFilter | None = None, query: str | None = None, categories: frozenset[str] = frozenset(),
    events: Sequence[dict[str, Any]] | Callable[[], Sequence[dict[str, Any]]] = (),
    segments: Callable[[], Iterable[str]] | frozenset[str] = frozenset(), user_id: str | None = None,
) -> Sponsored | None:
    """The answer with sponsored items in their ad-load positions (``None`` with retail media off);
    ``events`` and ``segments``: the user's, or functions that read them when a line item asks."""
    request = request_for(placement, k, hits, signals, exclude, item_filter, query,
                          categories | frozenset((item_filter or ItemFilter()).categories), events, segments=segments,
                          user_id=user_id)
    result = ads.place(tenant, published, config, request, explain=explain)
    return None if result is None else Sponsored(ads, result.items, result.explanation, result.placed, result.ghosts)
