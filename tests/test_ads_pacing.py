"""Pacing simulated over a day of traffic shaped like a shop's (quiet nights, an evening peak): a
budget that would be gone by mid-morning without pacing lasts the day and is nearly spent."""

import numpy as np

from lodestar.ads.pacing import (
    FLOOR,
    STEP_S,
    expected_share,
    next_participation,
    traffic_curve,
)

EVENING = [1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 9, 10, 9, 9, 9, 10, 12, 16, 18, 16, 10, 5, 2]


def simulate(paced: bool, budget: int, price: int = 1000) -> tuple[int, float]:
    """Spend and the hour the budget ran out (24.0: it lasted), over one simulated day where each
    served list is an auction the line item wins when it takes part, with a 5% click rate."""
    rng = np.random.default_rng(1)
    curve = traffic_curve(EVENING)
    probability, spent, empty_at = 1.0, 0, 24.0
    for step in range(int(86400 / STEP_S)):
        t = step * STEP_S
        lists = int(rng.poisson(EVENING[int(t // 3600)] * 20))
        takes_part = rng.random(lists) < (probability if paced else 1.0)
        clicks = int((takes_part & (rng.random(lists) < 0.05)).sum())
        if spent + clicks * price > budget:
            spent += (budget - spent) // price * price
            empty_at = min(empty_at, t / 3600)
        else:
            spent += clicks * price
        if paced:
            probability = next_participation(probability, spent, budget, expected_share(curve, t + STEP_S))
    return spent, empty_at


def test_the_curve_is_cumulative_and_flat_without_history():
    curve = traffic_curve(EVENING)
    assert curve[-1] == 1.0 and all(b >= a for a, b in zip(curve, curve[1:], strict=False))
    assert abs(traffic_curve([])[11] - 0.5) < 1e-9  # flat: half the day's traffic by noon
    assert abs(expected_share(traffic_curve([]), 6 * 3600) - 0.25) < 1e-9


def test_a_paced_budget_lasts_the_day_and_is_nearly_spent():
    budget = 600_000  # 600 clicks at 1,000 micros; unpaced, the day's traffic would buy ~1,800
    unpaced_spent, unpaced_empty = simulate(False, budget)
    paced_spent, paced_empty = simulate(True, budget)
    assert unpaced_empty < 14  # gone by early afternoon
    assert paced_empty >= 23 and paced_spent >= 0.9 * budget and paced_spent <= budget


def test_participation_rises_when_behind_and_falls_when_ahead_within_bounds():
    assert next_participation(0.5, 0, 1000, 0.5) > 0.5
    assert next_participation(0.5, 900, 1000, 0.5) < 0.5
    assert next_participation(1.0, 0, 1000, 1.0) == 1.0
    assert next_participation(FLOOR, 10**9, 1000, 0.0) == FLOOR
    assert next_participation(0.7, 0, 0, 0.5) == 0.0
