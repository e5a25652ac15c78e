"""Pacing: a daily budget spread over the day along the tenant's traffic, not gone by 9 am.

Method: probabilistic throttling. Each line item enters each auction with a participation
probability. Every ``STEP_S`` the probability is multiplied by ``exp(gain x error)``, where the error
is how far spend is behind (+) or ahead of (-) the target, as a share of the daily budget; the target
at time t is the daily budget times the share of the day's traffic expected by t (the tenant's
traffic curve: served lists per hour of the last two weeks, or flat without history). Chosen because
it needs no model of bid landscapes (unlike bid shading), reacts within minutes, cannot overspend by
itself (the ledger's reservation stops a line item at its budget), and degrades to "always take part"
when a budget is ample. The probability stays in [``FLOOR``, 1], so a line item that fell behind a
burst can still win again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STEP_S = 60.0
GAIN = 8.0
FLOOR = 0.01
HOURS = 24


def traffic_curve(lists_per_hour: Sequence[float]) -> list[float]:
    """The cumulative share of a day's traffic expected by the end of each hour (24 values ending
    at 1), from served lists per hour of day; flat when there is no history."""
    counts = [max(0.0, float(c)) for c in lists_per_hour] if len(lists_per_hour) == HOURS else []
    total = sum(counts)
    if not total:
        counts, total = [1.0] * HOURS, float(HOURS)
    out, running = [], 0.0
    for count in counts:
        running += count / total
        out.append(running)
    out[-1] = 1.0
    return out


def expected_share(curve: Sequence[float], seconds_into_day: float) -> float:
    """The share of the day's traffic expected by this time, interpolated within the hour."""
    hour = min(HOURS - 1, max(0, int(seconds_into_day // 3600)))
    before = curve[hour - 1] if hour else 0.0
    return before + (curve[hour] - before) * ((seconds_into_day - hour * 3600) / 3600)


def next_participation(probability: float, spent: int, daily_budget: int, share: float) -> float:
    """The participation probability for the next step, from spend so far (micros) against the
    target (``share`` of the daily budget)."""
    if daily_budget <= 0:
        return 0.0
    error = (share * daily_budget - spent) / daily_budget
    return min(1.0, max(FLOOR, probability * math.exp(GAIN * error)))
