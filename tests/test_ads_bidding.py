"""Automated bidding in a simulated market over a week (planted truth: the ad's true click and
conversion rates and value, competitors' bids varying by hour): a target-ROAS line item ends the
week within 15% of its target without spending past its budget; a max-clicks line item gets more
clicks than the same line item at a fixed bid for the same spend; goals are validated."""

from __future__ import annotations

import numpy as np
import pytest

from lodestar.ads.bidding import Goal, auction_bid, next_multiplier, parse_goal
from lodestar.ads.pacing import expected_share, traffic_curve
from lodestar.errors import InvalidInput

HOURLY = [1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 9, 10, 9, 9, 9, 10, 12, 16, 18, 16, 10, 5, 2]
CTR, CVR, VALUE = 0.08, 0.30, 20.0


def week(goal: Goal | None, fixed_bid: int = 0, daily: float = 60.0, first_price: bool = False, seed: int = 4):
    """Spend, clicks, conversions and revenue over 7 simulated days; each auction is won by
    outbidding the best competitor (lognormal, pricier in the evening) and priced at the second
    price (or the bid, at first price); clicks convert at CVR for VALUE."""
    rng = np.random.default_rng(seed)
    curve = traffic_curve(HOURLY)
    multiplier, spend, clicks, conversions, revenue = 1.0, 0.0, 0, 0, 0.0
    for day in range(7):
        spent_today = 0.0
        for hour in range(24):
            for _ in range(int(rng.poisson(HOURLY[hour] * 30))):
                bid = auction_bid(goal, multiplier, CVR, VALUE) / 1e6 if goal else fixed_bid / 1e6
                gate = (goal.max_bid if goal else fixed_bid) / 1e6  # as served: the highest bid must fit
                if daily - spent_today < gate or bid <= 0:  # less than that left today: out of the auction
                    continue
                rival = float(rng.lognormal(np.log(1.4 + 0.8 * (hour >= 17)), 0.6))
                if bid <= rival:
                    continue
                if rng.random() < CTR:
                    price = bid if first_price else min(bid, rival + 0.01)
                    spend, spent_today, clicks = spend + price, spent_today + price, clicks + 1
                    if rng.random() < CVR:
                        conversions, revenue = conversions + 1, revenue + VALUE
            if goal is not None:  # the controller's step, once an hour
                share = expected_share(curve, (hour + 1) * 3600)
                multiplier = next_multiplier(goal, multiplier, spend=spend, clicks=clicks, conversions=conversions,
                                             revenue=revenue, pace_error=(share * daily - spent_today) / daily,
                                             predicted_conversions=clicks * CVR, predicted_revenue=clicks * CVR * VALUE)
        assert spent_today <= daily  # the budget gate: never a click past the day's budget
    return spend, clicks, conversions, revenue


@pytest.mark.parametrize("first_price", [False, True])
def test_a_target_roas_line_item_reaches_its_target_within_its_budget(first_price):
    goal = parse_goal({"type": "target_roas", "target": 4.0, "max_bid": "5.00"})
    spend, clicks, conversions, revenue = week(goal, daily=1000.0, first_price=first_price)
    assert clicks > 300 and spend <= 7 * 1000.0
    assert abs(revenue / spend - 4.0) / 4.0 < 0.15, revenue / spend  # within 15% of the target
    # A lower target buys more clicks at a lower return:
    loose = week(Goal("target_roas", 5_000_000, 1.0), daily=1000.0, first_price=first_price)
    assert loose[3] / loose[0] < revenue / spend and loose[1] > clicks


def test_max_clicks_gets_more_clicks_than_a_fixed_bid_for_the_same_spend():
    daily = 40.0
    smart = week(parse_goal({"type": "max_clicks", "max_bid": "3.00"}), daily=daily)
    fixed = week(None, fixed_bid=3_000_000, daily=daily)
    assert fixed[0] >= 0.9 * 7 * daily and smart[0] >= 0.9 * fixed[0]  # both spend (about) the budget
    assert smart[1] > 1.15 * fixed[1], (smart[1], fixed[1])  # cheaper clicks, all day long


def test_a_target_cpa_line_item_converges_near_its_cost_per_conversion():
    goal = parse_goal({"type": "target_cpa", "target": 4.0, "max_bid": "4.00"})
    spend, clicks, conversions, _ = week(goal, daily=1000.0)
    assert conversions > 100 and abs(spend / conversions - 4.0) / 4.0 < 0.15


def test_bids_never_exceed_the_max_bid_and_move_at_most_25_percent_a_step():
    goal = Goal("target_roas", 1_000_000, 0.5)
    assert auction_bid(goal, 20.0, 0.5, 1000.0) == 1_000_000
    m = 1.0
    for _ in range(10):
        following = next_multiplier(goal, m, spend=1.0, clicks=100, conversions=100, revenue=10_000.0)
        assert following <= m * 1.25 + 1e-9
        m = following
    assert m <= 20.0


@pytest.mark.parametrize("raw, field", [
    ({"type": "max_clicks", "max_bid": "1", "target": 3}, "goal.target"),
    ({"type": "target_roas", "max_bid": "1"}, "goal.target"),
    ({"type": "target_cpa", "target": 5, "max_bid": "0"}, "goal.max_bid"),
    ({"type": "win_everything", "max_bid": "1"}, "goal"),
])
def test_goals_are_validated(raw, field):
    with pytest.raises(InvalidInput) as caught:
        parse_goal(raw)
    assert caught.value.field == field
