"""The auction for the sponsored slots of one list: a pure function of the eligible ads (each with
its bid and its relevance to this request), the tenant's settings and the slots the list offers.

Ranked by bid x quality (quality is the ad's relevance to the request, 0 to 1); the price is a
generalized second price: what the ad needed to keep its rank (the next ad's bid x quality over its
own quality) plus one cent, never above its bid and never below the reserve. An ad below the
relevance floor or bidding below the reserve never enters; a product is in the auction once (its
best line item), so a list never shows the same product twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lodestar.ads.money import CENT


@dataclass(frozen=True)
class Bid:
    line_item: str
    product: str
    advertiser: str
    bid: int  # micros
    relevance: float  # 0..1, the request's signals for this product
    quality: float | None = None  # defaults to the relevance

    @property
    def score(self) -> float:
        return self.bid * self.effective_quality

    @property
    def effective_quality(self) -> float:
        return self.relevance if self.quality is None else self.quality


@dataclass(frozen=True)
class AuctionSettings:
    reserve: int = CENT  # micros: the lowest price a click may cost
    relevance_floor: float = 0.1
    positions: tuple[int, ...] = (1, 5)  # 1-based list positions ads may take (the ad load)
    min_audience: int = 100  # a line item's audience segments smaller than this are not targeted
    first_price: bool = False  # winners pay their bid (the tenant's ``ads.auction``)


@dataclass(frozen=True)
class Win:
    position: int
    bid: Bid
    price: int  # micros, charged per click


@dataclass(frozen=True)
class Loss:
    bid: Bid
    reason: str


@dataclass(frozen=True)
class Outcome:
    wins: tuple[Win, ...]
    losses: tuple[Loss, ...]


def _order(bid: Bid) -> tuple:
    # Highest bid x quality first; ties to the higher bid, then by line item id: deterministic.
    return (-bid.score, -bid.bid, bid.line_item, bid.product)


def run_auction(bids: Sequence[Bid], settings: AuctionSettings, list_length: int,
                limits: Mapping[str, int] | None = None) -> Outcome:
    """The winners of the slots a list of ``list_length`` items offers (``settings.positions`` that
    fit in it), each with its position and price, and every other bid with why it lost. ``limits``
    caps how many slots a line item may win in this list (what its frequency cap leaves)."""
    limits = limits or {}
    losses: list[Loss] = []
    entered: dict[str, Bid] = {}
    for bid in sorted(bids, key=_order):
        if bid.relevance < settings.relevance_floor or bid.effective_quality <= 0:
            losses.append(Loss(bid, f"relevance {bid.relevance:.3f} below the floor {settings.relevance_floor:g}"))
        elif bid.bid < settings.reserve:
            losses.append(Loss(bid, "bid below the reserve price"))
        elif bid.product in entered:
            losses.append(Loss(bid, f"product already in the auction through line item {entered[bid.product].line_item}"))
        else:
            entered[bid.product] = bid
    slots = [p for p in sorted(set(settings.positions)) if 1 <= p <= list_length]
    # In rank order, the bids that may take a slot: a line item past its limit in this list gives
    # way to the next bid (which then also sets the price of the one before it).
    standing: list[Bid] = []
    won: dict[str, int] = {}
    for bid in sorted(entered.values(), key=_order):
        if len(standing) > len(slots):
            losses.append(Loss(bid, "outranked: no slot left"))
        elif bid.line_item in limits and won.get(bid.line_item, 0) >= limits[bid.line_item]:
            losses.append(Loss(bid, "frequency cap: no more of this line item in this list"))
        else:
            standing.append(bid)
            if len(standing) <= len(slots):
                won[bid.line_item] = won.get(bid.line_item, 0) + 1
    wins = []
    for rank, (bid, position) in enumerate(zip(standing, slots, strict=False)):
        after = standing[rank + 1] if rank + 1 < len(standing) else None
        needed = math.ceil(after.score / bid.effective_quality) + CENT if after is not None else settings.reserve
        price = bid.bid if settings.first_price else max(settings.reserve, min(bid.bid, needed))
        wins.append(Win(position, bid, price))
    losses += [Loss(bid, "outranked: no slot left") for bid in standing[len(wins):]]
    return Outcome(tuple(wins), tuple(losses))
