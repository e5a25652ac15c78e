"""The sponsored items of one request: which line items may enter, how relevant each promoted product
is to this request, the auction (:mod:`.auction`), and where the winners go in the list.

A :class:`Market` is built by each serving process from the tenant's line items and the ledger's
spend (at most a second old) and the published index (:class:`ProductTable`: the promoted products'
content vectors, collaborative factors and payloads); a request then costs a few vector operations
over the promoted products, whatever their number, and an auction over the best few.

Rules, in the order they apply:

* a line item enters when it is ``active``, started, not ended, its remaining budget (today's and
  total) is at least its bid, its placements include this one, its pacing draw lets it in, the user
  has not reached its frequency cap today, and its targeting matches: categories (any of them among
  the request's categories: its filter's, the similar item's, its organic items'), and for search
  its keywords (exact: the whole query; phrase: the words in order inside it; negative: never);
* its products enter when they are in the published index (available), pass the request's filter,
  are not excluded (the request's ``exclude``, the user's own items) and are not among the organic
  items of the list (a sponsored item never also appears as an organic one);
* each product's relevance, 0 to 1, comes from the signals its organic rival would be ranked by:
  the user's collaborative score (relative to the best organic item's) blended with their taste's
  content similarity by the tenant's ranking weights; the query's similarity for search; the
  item's similarity for similar items; popularity for a user nobody knows yet;
* :func:`~lodestar.ads.auction.run_auction` ranks by bid x relevance and prices each winner at the
  generalized second price; winners take the ad-load positions in order, organic items fill the
  rest in their own order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lodestar.ads.auction import AuctionSettings, Bid, Loss, Outcome, run_auction
from lodestar.ads.bidding import Goal
from lodestar.ads.incrementality import campaign_key, held_out
from lodestar.ads.money import item_price
from lodestar.ads.quality import QualityModel
from lodestar.ads.quality import features as quality_features
from lodestar.ads.tokens import ServedAd
from lodestar.collab import CollabModel
from lodestar.filters import ItemFilter
from lodestar.index import Hit, IndexReader

WORD = re.compile(r"[\w']+")
DAY_S = 86400
EXPLAIN_LOSSES = 20  # the best losers an explanation lists (the rest are counted by reason)


def words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.lower()))


@dataclass(frozen=True)
class LiveLineItem:
    """A line item as the auction sees it (money in micros)."""

    id: str
    advertiser: str
    advertiser_name: str
    campaign: str
    bid: int
    products: tuple[str, ...]
    placements: frozenset[str]
    categories: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()  # audience segments (any of them)
    exact: tuple[tuple[str, ...], ...] = ()
    phrase: tuple[tuple[str, ...], ...] = ()
    negative: tuple[tuple[str, ...], ...] = ()
    keyword_bids: tuple[tuple[tuple[str, ...], int], ...] = ()
    cap: int | None = None
    daily_budget: int = 0
    total_budget: int = 0
    start: float = 0.0
    end: float | None = None
    status: str = "active"
    holdout: float = 0.0  # the share of users its campaign holds out (lodestar.ads.incrementality)
    goal: Goal | None = None  # automated bidding (lodestar.ads.bidding): the bidder sets its bid

    @classmethod
    def of(cls, record: dict[str, Any], advertiser_name: str) -> LiveLineItem:
        targeting = record.get("targeting") or {}
        keywords = targeting.get("keywords") or {}
        cap = record.get("frequency_cap")
        return cls(
            id=record["id"], advertiser=record["advertiser"], advertiser_name=advertiser_name,
            campaign=record.get("campaign", record["id"]), bid=int(record["bid"]), products=tuple(record["products"]),
            placements=frozenset(record.get("placements") or ()), categories=frozenset(targeting.get("categories") or ()),
            segments=frozenset(targeting.get("segments") or ()),
            exact=tuple(words(k) for k in keywords.get("exact") or ()),
            phrase=tuple(words(k) for k in keywords.get("phrase") or ()),
            negative=tuple(words(k) for k in keywords.get("negative") or ()),
            keyword_bids=tuple((words(k), int(v)) for k, v in (record.get("keyword_bids") or {}).items()),
            cap=cap["per_user_per_day"] if cap else None, daily_budget=int(record["daily_budget"]),
            total_budget=int(record["total_budget"]), start=float(record.get("start") or 0.0), end=record.get("end"),
            status=record.get("status", "active"), holdout=float(record.get("holdout", 0.0)),
            goal=Goal(g["type"], int(g["max_bid"]), g.get("target")) if (g := record.get("goal")) else None,
        )

    @property
    def special(self) -> bool:
        """Whether entering needs more than the budget and the pacing draw (a per-request check)."""
        return bool(self.categories or self.segments or self.exact or self.phrase or self.negative
                    or self.keyword_bids or self.cap is not None)

    @property
    def max_bid(self) -> int:
        """The most one click may cost: the bid, or a higher keyword bid."""
        return max([self.bid, *(amount for _, amount in self.keyword_bids)])

    def remaining(self, spend: dict[str, int] | None) -> int:
        spend = spend or {}
        return min(self.daily_budget - spend.get("spent_today", 0), self.total_budget - spend.get("spent_total", 0))

    def state(self, spend: dict[str, int] | None, now: float) -> str:
        """``active`` (may enter auctions), or why not: ``paused``, ``scheduled``, ``ended``,
        ``exhausted`` (the total budget left cannot pay its highest bid) or ``spent_today``."""
        spend = spend or {}
        if self.status != "active":
            return self.status
        if now < self.start:
            return "scheduled"
        if self.end is not None and now >= self.end:
            return "ended"
        if self.total_budget - spend.get("spent_total", 0) < self.max_bid:
            return "exhausted"
        if self.daily_budget - spend.get("spent_today", 0) < self.max_bid:
            return "spent_today"
        return "active"

    def search_bid(self, query: tuple[str, ...]) -> tuple[int | None, str]:
        """The bid for a search query (``None`` when the targeting keeps it out, with why)."""
        if any(_contains(query, n) for n in self.negative):
            return None, "negative keyword in the query"
        targeted = bool(self.exact or self.phrase)
        matched = any(query == e for e in self.exact) or any(_contains(query, p) for p in self.phrase)
        if targeted and not matched:
            return None, "no targeted keyword in the query"
        bids = [amount for keyword, amount in self.keyword_bids if query == keyword or _contains(query, keyword)]
        return (max(bids) if bids else self.bid), ""


def _contains(query: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return n > 0 and any(query[i:i + n] == phrase for i in range(len(query) - n + 1))


class ProductTable:
    """The promoted products the published index holds (an unavailable or unknown product is not
    here, so never served): content vectors, collaborative factors, popularity and payloads."""

    def __init__(self, reader: IndexReader, model: CollabModel | None, product_ids: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(product_ids))
        points: dict[str, Hit] = {}
        for start in range(0, len(wanted), 1000):
            points.update(reader.points(wanted[start:start + 1000]))
        self.ids = [p for p in wanted if p in points and points[p].vector is not None]
        self.row = {p: n for n, p in enumerate(self.ids)}
        self.id_set = frozenset(self.ids)
        self.payloads = [points[p].payload for p in self.ids]
        dim = len(points[self.ids[0]].vector) if self.ids else 1
        self.content = np.stack([points[p].vector for p in self.ids]).astype(np.float32) if self.ids \
            else np.zeros((0, dim), dtype=np.float32)
        self.factors = model.factors_for(self.ids) if model is not None and self.ids else None
        self.popularity = np.asarray([float(p.get("popularity") or 0.0) for p in self.payloads], dtype=np.float32)
        self.price = np.asarray([item_price(p) for p in self.payloads], dtype=np.float64)
        self.categories = [frozenset(p.get("categories") or ()) for p in self.payloads]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Signals:
    """What a request knows of what its user wants: the vectors its organic items were ranked by."""

    content: np.ndarray | None = None  # taste, query, similar item or profile vector (unit length)
    collab: np.ndarray | None = None  # the user's folded-in vector in factor space
    collab_scale: float = 1.0  # the best organic item's collaborative score (relevance 1)
    collab_weight: float = 0.0
    content_weight: float = 1.0

    def relevance(self, table: ProductTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Relevance (0 to 1) of the table's ``rows`` (``None``: every row, in one pass over it)."""
        def of(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
            return matrix @ vector if rows is None else matrix[rows] @ vector

        parts, weights = [], []
        if self.collab is not None and table.factors is not None and self.collab_weight > 0:
            parts.append(np.clip(of(table.factors, self.collab) / max(self.collab_scale, 1e-9), 0.0, 1.0))
            weights.append(self.collab_weight)
        if self.content is not None and (self.content_weight > 0 or not parts):
            parts.append(np.clip(of(table.content, self.content), 0.0, 1.0))
            weights.append(self.content_weight or 1.0)
        if not parts:  # nothing known of the user: how much everyone engages with it
            return table.popularity if rows is None else table.popularity[rows]
        return sum(w * p for w, p in zip(weights, parts, strict=True)) / sum(weights)


@dataclass
class AdRequest:
    placement: str
    k: int
    organic: Sequence[Hit]
    signals: Signals
    exclude: frozenset[str] = frozenset()
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    query: str | None = None
    categories: frozenset[str] = frozenset()  # the request's own (its filter's, the similar item's)
    # The user's latest events, or a function that reads them (only a capped line item asks).
    events: Sequence[dict[str, Any]] | Callable[[], Sequence[dict[str, Any]]] = ()
    now: float = 0.0
    open_ad: Callable[[str], ServedAd | None] | None = None  # what an ad id names (set by the server)
    # The user's audience segments, or a function that reads them (only a segment-targeted line item asks).
    segments: frozenset[str] | Callable[[], Iterable[str]] = frozenset()
    user_id: str | None = None  # a known user (campaign holdouts apply to known users only)
    _impressions: dict[str, int] | None = None
    _segments: frozenset[str] | None = None

    def user_segments(self) -> frozenset[str]:
        if self._segments is None:
            self._segments = frozenset(self.segments() if callable(self.segments) else self.segments)
        return self._segments

    def impressions_today(self) -> dict[str, int]:
        """The user's ad impressions since midnight UTC, by line item (frequency caps)."""
        if self._impressions is None:
            midnight = self.now - self.now % DAY_S
            counts: dict[str, int] = {}
            events = self.events() if callable(self.events) else self.events
            for event in events:
                if event.get("ad_id") and event["type"] == "impression" and event["ts"] >= midnight \
                        and self.open_ad is not None:
                    ad = self.open_ad(event["ad_id"])
                    if ad is not None:
                        counts[ad.line_item] = counts.get(ad.line_item, 0) + 1
            self._impressions = counts
        return self._impressions


@dataclass(frozen=True)
class Placed:
    """A sponsored item of the answer."""

    position: int
    line_item: LiveLineItem
    product: str
    product_index: int
    price: int
    bid: int
    relevance: float
    payload: dict[str, Any]


@dataclass
class AdsResult:
    items: list[Hit | Placed]  # the answer, ads in their positions
    placed: list[Placed]
    explanation: dict[str, Any] | None = None
    ghosts: list[Placed] = field(default_factory=list)  # won, but the user is held out of the campaign


class Market:
    """A tenant's live line items for one published index, ready for requests."""

    def __init__(self, line_items: Sequence[LiveLineItem], table: ProductTable, settings: AuctionSettings,
                 participation: dict[str, float] | None = None, quality: QualityModel | None = None) -> None:
        self.settings = settings
        self.table = table
        self.by_placement: dict[str, _PlacementBook] = {}
        placements = {p for li in line_items for p in li.placements}
        for placement in placements:
            self.by_placement[placement] = _PlacementBook(
                [li for li in line_items if placement in li.placements], table, participation or {})
        self.set_quality(quality)

    def set_bids(self, bids: dict[str, int]) -> None:
        """The bidder's current bids of goal line items (micros), swapped in whole."""
        for book in self.by_placement.values():
            if any(li.goal is not None for li in book.line_items):
                book.bids = np.asarray([bids.get(li.id, li.bid) if li.goal is not None else li.bid
                                        for li in book.line_items], dtype=np.int64)

    def set_quality(self, model: QualityModel | None) -> None:
        """The published ad-quality model (``None``: relevance is the quality), swapped in whole."""
        for book in self.by_placement.values():
            book.scoring = None if model is None else (
                model, np.asarray([model.ctr_of(li.id) for li in book.line_items]),
                np.asarray([model.advertiser_ctr_of(li.advertiser) for li in book.line_items]))

    def __bool__(self) -> bool:
        return bool(self.by_placement)

    def set_participation(self, participation: dict[str, float]) -> None:
        """New pacing probabilities (a new array per placement, swapped in whole)."""
        for book in self.by_placement.values():
            book.participation = np.asarray([participation.get(li.id, 1.0) for li in book.line_items], dtype=np.float64)

    def serve(self, request: AdRequest, rng: np.random.Generator, explain: bool = False) -> AdsResult:
        organic = list(request.organic)[:request.k]
        book = self.by_placement.get(request.placement)
        slots = [p for p in sorted(set(self.settings.positions)) if 1 <= p <= request.k]
        if book is None or not slots or not len(self.table):
            return AdsResult(organic, [], {"auction": "no line item for this placement"} if explain else None)
        outcome, eligible, counts = book.auction(request, organic, slots, rng, self.settings, explain)
        placed, ghosts = [], []
        for win in outcome.wins:
            li = book.line_items[book.index_of[win.bid.line_item]]
            ad = Placed(win.position, li, win.bid.product, li.products.index(win.bid.product), win.price, win.bid.bid,
                        win.bid.relevance, self.table.payloads[self.table.row[win.bid.product]])
            # A user held out of the campaign is not shown its ad; the slot goes to the organic list
            # and the ad is recorded as a ghost (what they would have seen), for incrementality.
            held = request.user_id is not None and held_out(campaign_key(li.advertiser, li.campaign),
                                                             request.user_id, li.holdout)
            (ghosts if held else placed).append(ad)
        at = {p.position: p for p in placed}
        shown: list[Hit | Placed] = []
        rest = iter(organic)
        for position in range(1, request.k + 1):
            if position in at:
                shown.append(at[position])
            elif (hit := next(rest, None)) is not None:
                shown.append(hit)
        explanation = _explain(book, outcome, eligible, counts) if explain else None
        if explanation is not None and ghosts:
            explanation["held_out"] = [{"line_item": g.line_item.id, "campaign": g.line_item.campaign,
                                        "product": g.product, "position": g.position} for g in ghosts]
        return AdsResult(shown, placed, explanation, ghosts)


class _PlacementBook:
    """The line items of one placement as arrays: each (line item, product) pair is an entry."""

    def __init__(self, line_items: Sequence[LiveLineItem], table: ProductTable, participation: dict[str, float]) -> None:
        self.line_items = list(line_items)
        self.index_of = {li.id: n for n, li in enumerate(self.line_items)}
        self.bids = np.asarray([li.bid for li in self.line_items], dtype=np.int64)
        self.participation = np.asarray([participation.get(li.id, 1.0) for li in self.line_items], dtype=np.float64)
        self.special = [n for n, li in enumerate(self.line_items) if li.special]
        entry_li, entry_row = [], []
        for n, li in enumerate(self.line_items):
            for product in li.products:
                row = table.row.get(product)
                if row is not None:
                    entry_li.append(n)
                    entry_row.append(row)
        # The ad-quality model with its line items' and advertisers' CTRs (one tuple, swapped whole).
        self.scoring: tuple[QualityModel, np.ndarray, np.ndarray] | None = None
        self.entry_li = np.asarray(entry_li, dtype=np.int64)
        self.entry_row = np.asarray(entry_row, dtype=np.int64)
        self.table = table

    def auction(self, request: AdRequest, organic: list[Hit], slots: list[int], rng: np.random.Generator,
                settings: AuctionSettings, explain: bool) -> tuple[Outcome, np.ndarray, dict[str, int]]:
        table, counts = self.table, {}
        n = len(self.line_items)
        bids = self.bids.copy()
        entering = rng.random(n) < self.participation
        if explain:
            counts["paced out this time (pacing)"] = int((~entering).sum())
        query = words(request.query) if request.query is not None else None
        context = set(request.categories)
        for hit in organic:
            context.update(hit.payload.get("categories") or ())
        limits: dict[str, int] = {}  # a capped line item's slots left in this list
        for i in self.special:
            if not entering[i]:
                continue
            li = self.line_items[i]
            why = ""
            if li.cap is not None:
                limits[li.id] = li.cap - request.impressions_today().get(li.id, 0)
            if li.cap is not None and limits[li.id] <= 0:
                why = "frequency cap reached for this user today"
            elif li.categories and not li.categories & context:
                why = "category targeting does not match"
            elif li.segments and not li.segments & request.user_segments():
                why = "audience segment targeting does not match"
            elif query is not None:
                bid, why = li.search_bid(query)
                if li.goal is None:  # a goal line item keeps the bidder's bid; keywords only target it
                    bids[i] = bid or 0
            if why:
                entering[i] = False
                if explain:
                    counts[why] = counts.get(why, 0) + 1
        rows_out = np.zeros(len(table), dtype=bool)
        out = (request.exclude | {h.item_id for h in organic}) & table.id_set  # a set intersection, in C
        rows_out[[table.row[i] for i in out]] = True
        mask = entering[self.entry_li] & ~rows_out[self.entry_row]
        if explain:
            counts["product excluded or already in the organic list"] = int(
                (entering[self.entry_li] & rows_out[self.entry_row]).sum())
        if not request.item_filter.empty and mask.any():
            rows = np.unique(self.entry_row[mask])
            passing = np.zeros(len(table), dtype=bool)
            passing[[r for r in rows if request.item_filter.matches(table.payloads[r])]] = True
            if explain:
                counts["product does not pass the request's filter"] = int((mask & ~passing[self.entry_row]).sum())
            mask &= passing[self.entry_row]
        eligible = np.flatnonzero(mask)
        if not len(eligible):
            return Outcome((), ()), eligible, counts
        rows = self.entry_row[eligible]
        if len(rows) * 4 > len(table):  # most of the table: one pass over all of it beats gathering rows
            relevance = np.clip(request.signals.relevance(table), 0.0, 1.0)[rows]
        else:
            unique_rows, inverse = np.unique(rows, return_inverse=True)
            relevance = np.clip(request.signals.relevance(table, unique_rows), 0.0, 1.0)[inverse]
        entry_bids = bids[self.entry_li[eligible]]
        ok = (relevance >= settings.relevance_floor) & (relevance > 0) & (entry_bids >= settings.reserve)
        if explain:
            counts["relevance below the floor"] = int(((relevance < settings.relevance_floor) | (relevance <= 0)).sum())
            counts["bid below the reserve price"] = int((entry_bids < settings.reserve).sum())
        eligible, relevance, entry_bids = eligible[ok], relevance[ok], entry_bids[ok]
        if not len(eligible):
            return Outcome((), ()), eligible, counts
        quality = relevance
        scoring = self.scoring
        model = scoring[0] if scoring is not None else None
        if scoring is not None:  # the learned click probability (as at position 1) replaces relevance
            rows = self.entry_row[eligible]
            lis = self.entry_li[eligible]
            quality = model.predict(quality_features(relevance, np.ones(len(rows)), table.popularity[rows],
                                                     table.price[rows], scoring[1][lis], scoring[2][lis],
                                                     request.placement))
        scores = entry_bids * quality
        # The auction needs the best entries of len(slots) + 1 distinct products (the last winner's
        # price depends on the next one); a product's other line items are behind its best.
        want = len(slots) + 1 + (EXPLAIN_LOSSES if explain else 0)
        take = min(len(scores), 8 * want)
        while True:
            top = np.argpartition(-scores, take - 1)[:take] if take < len(scores) else np.arange(len(scores))
            if take >= len(scores) or len(set(self.entry_row[eligible[top]].tolist())) >= want:
                break
            take *= 4
        candidates = [Bid(self.line_items[int(self.entry_li[e])].id, table.ids[int(self.entry_row[e])],
                          self.line_items[int(self.entry_li[e])].advertiser, int(b), float(r),
                          None if model is None else float(q))
                      for e, b, r, q in zip(eligible[top], entry_bids[top], relevance[top], quality[top], strict=True)]
        outcome = run_auction(candidates, settings, request.k, limits)
        if explain:
            counts["outranked"] = int(len(eligible) - len(outcome.wins))
        return outcome, eligible, counts


def _explain(book: _PlacementBook, outcome: Outcome, eligible: np.ndarray, counts: dict[str, int]) -> dict[str, Any]:
    def bid_row(bid: Bid, **extra: Any) -> dict[str, Any]:
        li = book.line_items[book.index_of[bid.line_item]]
        return {"line_item": li.id, "advertiser": li.advertiser_name, "product": bid.product, "bid": bid.bid,
                "relevance": round(bid.relevance, 4),
                "pctr": None if bid.quality is None else round(bid.quality, 5),  # the ad-quality model's
                "score": round(bid.score / 1e6, 6), **extra}

    losses: list[Loss] = sorted(outcome.losses, key=lambda loss: -loss.bid.score)[:EXPLAIN_LOSSES]
    return {
        "line_items": len(book.line_items), "eligible": int(len(eligible)),
        "winners": [bid_row(w.bid, position=w.position, price=w.price) for w in outcome.wins],
        "losers": [bid_row(loss.bid, reason=loss.reason) for loss in losses],
        "left_out": {reason: count for reason, count in counts.items() if count},
    }


def collab_scale(model: CollabModel | None, query: np.ndarray | None, organic: Sequence[Hit]) -> float:
    """The best collaborative score among the organic items (what relevance 1 means)."""
    if model is None or query is None or not organic:
        return 1.0
    best = float(np.max(model.factors_for([h.item_id for h in organic]) @ query))
    return best if math.isfinite(best) and best > 0 else 1.0
