"""The sponsored-slot auction as a pure function: ranking by bid x quality, generalized second
prices within the bid and the reserve, the floor, one entry per product, and the ad load."""

import random

import pytest

from lodestar.ads.auction import AuctionSettings, Bid, run_auction
from lodestar.ads.money import CENT, format_money, parse_money
from lodestar.errors import InvalidInput

SETTINGS = AuctionSettings(reserve=5 * CENT, relevance_floor=0.2, positions=(1, 5))


def bid(line_item, cents, relevance, product=None, advertiser="acme"):
    return Bid(line_item, product or f"p-{line_item}", advertiser, cents * CENT, relevance)


def test_rank_by_bid_times_quality_and_pay_what_keeps_the_rank_plus_a_cent():
    outcome = run_auction([bid("a", 100, 0.5), bid("b", 80, 0.9), bid("c", 60, 0.5)], SETTINGS, 10)
    (first, second), = [outcome.wins]
    # Bids in cents. b: 80 x 0.9 = 72 beats a: 100 x 0.5 = 50; b pays 50 / 0.9 = 55.56 cents, + 1 cent.
    assert (first.bid.line_item, first.position, format_money(first.price)) == ("b", 1, "0.565556")
    # a pays what keeps it above c (60 x 0.5 = 30): 30 / 0.5 = 60 cents, + 1 cent, under its bid of 1.00.
    assert (second.bid.line_item, second.position, format_money(second.price)) == ("a", 5, "0.61")
    assert [(l.bid.line_item, l.reason) for l in outcome.losses] == [("c", "outranked: no slot left")]


def test_prices_stay_within_the_bid_and_above_the_reserve():
    alone = run_auction([bid("a", 100, 0.9)], SETTINGS, 10).wins[0]
    assert alone.price == 5 * CENT  # nobody to beat: the reserve
    close = run_auction([bid("a", 100, 0.5), bid("b", 100, 0.5)], SETTINGS, 10).wins
    assert close[0].price == 100 * CENT  # 100 + 0.01 is above its bid: the bid
    rng = random.Random(5)
    for _ in range(500):
        bids = [bid(f"l{n}", rng.randint(1, 300), rng.random()) for n in range(rng.randint(0, 12))]
        outcome = run_auction(bids, SETTINGS, rng.randint(0, 12))
        scores = [w.bid.score for w in outcome.wins]
        assert scores == sorted(scores, reverse=True)
        for win in outcome.wins:
            assert SETTINGS.reserve <= win.price <= win.bid.bid
        assert len(outcome.wins) + len(outcome.losses) == len(bids)


def test_the_floor_the_reserve_and_one_entry_per_product():
    outcome = run_auction([bid("low", 300, 0.1), bid("cheap", 4, 0.9), bid("x1", 50, 0.8, product="p"),
                           bid("x2", 90, 0.8, product="p")], SETTINGS, 10)
    assert [w.bid.line_item for w in outcome.wins] == ["x2"]
    reasons = {l.bid.line_item: l.reason for l in outcome.losses}
    assert reasons["low"].startswith("relevance 0.100 below the floor")
    assert reasons["cheap"] == "bid below the reserve price"
    assert reasons["x1"] == "product already in the auction through line item x2"


def test_the_ad_load_fixes_where_ads_go_and_short_lists_offer_fewer_slots():
    bids = [bid(f"l{n}", 100 - n, 0.9) for n in range(5)]
    assert [w.position for w in run_auction(bids, SETTINGS, 10).wins] == [1, 5]
    assert [w.position for w in run_auction(bids, SETTINGS, 3).wins] == [1]
    assert run_auction(bids, AuctionSettings(positions=()), 10).wins == ()


def test_money_is_exact_micros():
    assert parse_money("0.35", "bid") == 350_000 and parse_money(2, "bid") == 2_000_000
    assert format_money(parse_money("12.3456", "x")) == "12.3456"
    for bad in ("-1", "0.1234567", "abc", True, None, float("nan")):
        with pytest.raises(InvalidInput):
            parse_money(bad, "bid")


def test_a_line_item_at_its_limit_gives_its_slot_and_its_price_setting_to_the_next_bid():
    bids = [bid("a", 100, 0.9, "p1"), bid("a", 100, 0.8, "p2"), bid("b", 50, 0.9, "p3"), bid("c", 40, 0.9, "p4")]
    free = run_auction(bids, SETTINGS, 10)
    assert [(w.bid.line_item, w.bid.product) for w in free.wins] == [("a", "p1"), ("a", "p2")]
    capped = run_auction(bids, SETTINGS, 10, {"a": 1})  # one more impression of "a" allowed today
    assert [(w.bid.line_item, w.bid.product, w.position) for w in capped.wins] == [("a", "p1", 1), ("b", "p3", 5)]
    # a's price is set by b (the next bid that could take the slot), not by a's own second product.
    assert capped.wins[0].price == -(-50 * CENT * 0.9 // 0.9) + CENT
    assert ("a", "frequency cap: no more of this line item in this list") in [
        (l.bid.line_item, l.reason) for l in capped.losses]
    assert capped.wins[1].price == -(-40 * CENT * 0.9 // 0.9) + CENT  # b pays what keeps it above c
