"""Automated bidding: a line item sets a goal instead of a bid, and each auction's bid follows from
the ad's predicted click and conversion rates and the goal, corrected by what the line item's
spend and results have been.

Goals (``goal`` on a line item, with ``max_bid``, which no bid ever exceeds):

* ``max_clicks``: the most clicks within the daily budget. Every auction gets the same bid, the
  budget's *clearing* bid: under a budget the optimal strategy is a uniform bid (paying more for
  some clicks than others only buys fewer of them). It is found by feedback: the controller
  raises it while spend is behind the day's pace and lowers it while ahead.
* ``target_cpa``: conversions at a cost per conversion: bid = target x pCVR (what a click is
  worth at the target), times a correction.
* ``target_roas``: revenue at a return on spend: bid = pCVR x value / target, times a correction.

**The controller** (documented, bounded): every :data:`STEP_S`, a multiplier moves by the square
root of how far the result is from the goal (observed ROAS over target, or target CPA over
observed CPA, the observed results blended with the predicted ones by credibility), or by the pacing
error for clicks; while spend is ahead of the day's pace it falls at least as the pace asks. Each
step changes it by at most 25%, within [0.05, 20]. A proportional controller in log space: it
converges where the result meets the goal (or the budget is spent), and one bad hour moves it 25%
at most.

Under automated bidding the auction may run at first price (the tenant setting ``ads.auction``):
the bidder already bids what a click is worth to the goal, so a second-price discount would only
make it bid higher to compensate; first price keeps prices predictable for the advertiser. With
manual bids, second price keeps bidding truthful (what keeps the slot, plus 0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lodestar.ads.money import parse_money
from lodestar.errors import InvalidInput

GOALS = ("max_clicks", "target_cpa", "target_roas")
STEP_S = 3600.0
MAX_STEP = 1.25
BOUNDS = (0.05, 20.0)
CREDIBILITY = 50.0  # conversions before the observed ones count as much as the predicted ones


@dataclass(frozen=True)
class Goal:
    kind: str
    max_bid: int  # micros
    target: float | None = None  # CPA in currency units, or ROAS (revenue per unit of spend)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "target": self.target, "max_bid": self.max_bid}


def parse_goal(raw: Any) -> Goal | None:
    """A line item's ``goal``: ``{"type": "target_roas", "target": 4, "max_bid": "1.20"}`` (``max_bid``
    always; ``target``: a CPA amount or a ROAS ratio; none for ``max_clicks``)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in GOALS or set(raw) - {"type", "target", "max_bid"}:
        raise InvalidInput(f"goal: {{\"type\": one of {', '.join(GOALS)}, \"target\", \"max_bid\"}}", field="goal")
    max_bid = parse_money(raw.get("max_bid"), "goal.max_bid")
    if max_bid <= 0:
        raise InvalidInput("goal.max_bid: the most one click may cost, above 0", field="goal.max_bid")
    target = raw.get("target")
    if raw["type"] == "max_clicks":
        if target is not None:
            raise InvalidInput("goal.target: max_clicks has no target (it spends the budget)", field="goal.target")
        return Goal("max_clicks", max_bid)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1_000_000:
        what = "a cost per conversion" if raw["type"] == "target_cpa" else "a return on spend (revenue per unit spent)"
        raise InvalidInput(f"goal.target: {what} above 0", field="goal.target")
    return Goal(raw["type"], max_bid, float(target))


def auction_bid(goal: Goal, multiplier: float, pcvr: float, value: float) -> int:
    """This auction's bid in micros: never above ``max_bid``, never below 0."""
    if goal.kind == "max_clicks":
        worth = goal.max_bid / 1e6 * 0.5  # the multiplier scales half the maximum
    elif goal.kind == "target_cpa":
        worth = (goal.target or 0.0) * pcvr
    else:
        worth = pcvr * value / (goal.target or 1.0)
    return max(0, min(goal.max_bid, int(worth * multiplier * 1e6)))


def next_multiplier(goal: Goal, multiplier: float, *, spend: float, clicks: float, conversions: float,
                    revenue: float, pace_error: float = 0.0, predicted_conversions: float | None = None,
                    predicted_revenue: float | None = None) -> float:
    """The multiplier for the next step from results so far (currency units). ``pace_error``: how
    far today's spend is behind (+) or ahead (-) of the day's pace, as a share of the daily budget.
    ``predicted_*``: what the clicks bought were expected to bring (clicks x pCVR, x value).

    The result compared with the goal blends the observed conversions and revenue with the
    predicted ones by credibility (observed weight n / (n + :data:`CREDIBILITY`) for n
    conversions): a few unlucky clicks cannot drive the bid down before the data says anything.
    ``max_clicks`` follows the pace alone. The others follow the goal (the square root of how far
    the result is from it: above the goal there is room to bid more); while spend runs ahead of
    pace they fall at least as the pace asks (the budget would run out before the day's best
    traffic). Before any spend, a goal line item rises as the pace asks, to find its market."""
    pace = math.exp(2.0 * pace_error)
    if goal.kind == "max_clicks" or spend <= 0:
        ratio = pace if goal.kind == "max_clicks" else max(1.0, pace)
    else:
        weight = conversions / (conversions + CREDIBILITY)
        got_conversions = weight * conversions + (1 - weight) * (
            conversions if predicted_conversions is None else predicted_conversions)
        got_revenue = weight * revenue + (1 - weight) * (revenue if predicted_revenue is None else predicted_revenue)
        if goal.kind == "target_cpa":
            ratio = math.sqrt((goal.target or 1.0) * max(got_conversions, 1e-9) / spend)
        else:
            ratio = math.sqrt(got_revenue / spend / (goal.target or 1.0))
        if pace_error < 0:  # ahead of the day's pace: never faster than the budget allows
            ratio = min(ratio, pace)
    ratio = min(MAX_STEP, max(1 / MAX_STEP, ratio))
    return min(BOUNDS[1], max(BOUNDS[0], multiplier * ratio))
