"""The statistics of an experiment, from kept libraries: statsmodels for the test, its interval and
the power analysis, scipy for the sample-ratio check.

* **Unit of analysis = unit of randomization.** Users (or sessions) are assigned, so each metric is
  a value per unit (its CTR over the impressions it was shown, whether it converted, its revenue),
  and variants are compared on those values. Testing impressions as if independent would count a
  heavy user's hundred impressions as a hundred pieces of evidence and find "winners" in A/A tests.
* **Welch's t-test** of the per-unit means (``statsmodels.stats.weightstats.CompareMeans``, unequal
  variances): valid for any of the three metrics at the sample sizes experiments need (the central
  limit theorem, checked by the A/A simulations in tests/test_experiment_statistics.py).
* **Relative lift** (treatment / control - 1) with its interval by Fieller's method for a ratio of
  two independent means, which excludes 0 exactly when the test rejects: the interval and the
  p-value never tell different stories.
* **Fixed horizon.** The sample a variant needs is computed when the experiment is created, from the
  minimum detectable effect asked for (``statsmodels.stats.power.tt_ind_solve_power``), and results
  (lift, interval, p-value, winner) stay hidden until every variant has that many units and the
  minimum duration has passed. One look at a pre-registered horizon keeps the false positive rate at
  alpha; peeking daily at a fixed-horizon test would not. (A sequential method would allow stopping
  early but pays for it in power and is harder to explain; fixed horizon was chosen for clarity.)
* **Sample ratio mismatch**: a chi-square goodness-of-fit test (``scipy.stats.chisquare``) of the
  units per variant against the intended weights; p < 0.001 flags a broken split, whose results
  must not be trusted (the flag is shown before the horizon too).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SRM_ALPHA = 0.001
# scipy.stats and statsmodels are imported by the functions that use them: the API process imports
# this module for experiment definitions, and need not hold them in memory until one is analysed.


@dataclass(frozen=True)
class Comparison:
    control_mean: float
    mean: float
    lift: float  # relative: mean / control_mean - 1
    lift_low: float
    lift_high: float
    difference_low: float  # the absolute difference's interval (consistent with the p-value)
    difference_high: float
    p_value: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON values (an undefined lift, over a control mean of 0, is null)."""
        return {k: round(v, 6) if math.isfinite(v) else None for k, v in self.__dict__.items()}


def compare(control: Sequence[float], treatment: Sequence[float], alpha: float = 0.05) -> Comparison:
    """Treatment against control on per-unit values: Welch's t-test and the (1 - alpha) intervals."""
    c, t = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    if len(c) < 2 or len(t) < 2:
        raise ValueError("each variant needs at least two units to be compared")
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    means = CompareMeans(DescrStatsW(t), DescrStatsW(c))
    with warnings.catch_warnings():  # two constant samples (no revenue on either side): no evidence, p = 1
        warnings.simplefilter("ignore", RuntimeWarning)
        _, p_value, df = means.ttest_ind(usevar="unequal")
        low, high = means.tconfint_diff(alpha=alpha, usevar="unequal")
    m0, m1 = float(c.mean()), float(t.mean())
    lift = m1 / m0 - 1 if m0 else math.nan
    lift_low, lift_high = _fieller(m0, m1, c.var(ddof=1) / len(c), t.var(ddof=1) / len(t), df, alpha)
    p = float(p_value) if not math.isnan(p_value) else 1.0
    return Comparison(m0, m1, lift, lift_low, lift_high, float(low), float(high), p)


def _fieller(m0: float, m1: float, v0: float, v1: float, df: float, alpha: float) -> tuple[float, float]:
    """The relative lift's interval by Fieller's method for the ratio of two independent means: the
    ratios r with (m1 - r m0)^2 <= q^2 (v1 + r^2 v0), q Welch's t quantile. It excludes a lift of 0
    exactly when Welch's test rejects (both are the same inequality at r = 1), so the interval and the
    p-value never disagree. NaN bounds when the control mean is not clearly above 0 (unbounded)."""
    if not math.isfinite(df) or m0 <= 0:
        return math.nan, math.nan
    from scipy import stats

    q2 = stats.t.ppf(1 - alpha / 2, df) ** 2
    a, b, c = m0**2 - q2 * v0, -2 * m0 * m1, m1**2 - q2 * v1
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return math.nan, math.nan
    root = math.sqrt(disc)
    return float((-b - root) / (2 * a) - 1), float((-b + root) / (2 * a) - 1)


def sample_ratio_mismatch(units: Sequence[int], weights: Sequence[float]) -> float:
    """The chi-square test's p-value of the units per variant against the intended weights
    (below :data:`SRM_ALPHA`: the split is broken)."""
    observed = np.asarray(units, dtype=float)
    if observed.sum() == 0:
        return 1.0
    expected = observed.sum() * np.asarray(weights, dtype=float) / sum(weights)
    from scipy import stats

    return float(stats.chisquare(observed, f_exp=expected).pvalue)


def units_needed(baseline_mean: float, baseline_sd: float, mde: float, weights: Sequence[float],
                 alpha: float = 0.05, power: float = 0.8) -> list[int]:
    """Units each variant needs for Welch's test to detect a relative change of ``mde`` in the metric
    (from ``baseline_mean`` with per-unit standard deviation ``baseline_sd``) with probability
    ``power`` at level ``alpha``; the first variant is the control, each other compared with it."""
    if baseline_mean <= 0 or baseline_sd <= 0 or mde <= 0:
        raise ValueError("the power analysis needs a positive baseline, standard deviation and effect")
    from statsmodels.stats.power import tt_ind_solve_power

    effect = mde * baseline_mean / baseline_sd
    control = max(tt_ind_solve_power(effect_size=effect, alpha=alpha, power=power, ratio=w / weights[0])
                  for w in weights[1:])
    return [math.ceil(control * w / weights[0]) for w in weights]


def detectable_effect(baseline_mean: float, baseline_sd: float, control_units: int, ratio: float,
                      alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest relative change the test detects with ``power`` at ``control_units`` units in
    the control (and ``ratio`` times as many in the variant)."""
    from statsmodels.stats.power import tt_ind_solve_power

    effect = tt_ind_solve_power(nobs1=control_units, alpha=alpha, power=power, ratio=ratio)
    return float(effect * baseline_sd / baseline_mean)
