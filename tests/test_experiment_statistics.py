"""The experiments' statistics and assignment, proven by simulation on generated traffic: users
whose click-through rates differ (as real users' do), a list of impressions each."""

from __future__ import annotations

import numpy as np
from scipy import stats

from lodestar.experiments.assignment import BUCKETS, assign, bucket
from lodestar.experiments.statistics import (
    SRM_ALPHA,
    compare,
    detectable_effect,
    sample_ratio_mismatch,
    units_needed,
)

RUNS = 200
ALPHA = 0.05


def user_ctrs(rng: np.random.Generator, users: int, lift: float = 0.0) -> np.ndarray:
    """Each user's CTR over their impressions: a per-user rate (Beta, mean 5%, users differ a lot),
    times 1 + ``lift``, and 1 to 40 impressions each."""
    rates = np.minimum(rng.beta(0.5, 9.5, users) * (1 + lift), 1.0)
    impressions = rng.integers(1, 41, users)
    return rng.binomial(impressions, rates) / impressions


def pilot(rng: np.random.Generator) -> tuple[float, float]:
    """The baseline a tenant's history would give: mean and standard deviation of user CTRs."""
    sample = user_ctrs(rng, 20_000)
    return float(sample.mean()), float(sample.std(ddof=1))


def test_aa_experiments_declare_a_winner_at_most_alpha_of_the_time():
    rng = np.random.default_rng(11)
    mean, sd = pilot(rng)
    units = units_needed(mean, sd, 0.1, [0.5, 0.5])[0]
    winners = sum(compare(user_ctrs(rng, units), user_ctrs(rng, units)).p_value < ALPHA for _ in range(RUNS))
    margin = stats.binom.ppf(0.995, RUNS, ALPHA)  # 5%, plus what chance adds in 200 runs
    assert winners <= margin, f"{winners} of {RUNS} A/A experiments declared a winner (at most {margin:.0f})"


def test_impressions_tested_as_independent_would_find_winners_where_there_are_none():
    """Why units are the unit of analysis: the same A/A traffic, tested per impression with a
    two-proportion test, declares far more than 5% winners (users differ, impressions cluster)."""
    from statsmodels.stats.proportion import proportions_ztest

    rng = np.random.default_rng(12)
    wrong = 0
    for _ in range(100):
        clicks, shown = [], []
        for _arm in range(2):
            rates = rng.beta(0.5, 9.5, 2000)
            impressions = rng.integers(1, 200, 2000)
            clicks.append(int(rng.binomial(impressions, rates).sum()))
            shown.append(int(impressions.sum()))
        wrong += proportions_ztest(clicks, shown)[1] < ALPHA
    assert wrong > 20


def test_a_planted_ten_percent_lift_is_found_at_about_the_promised_power():
    rng = np.random.default_rng(13)
    mean, sd = pilot(rng)
    control, treatment = units_needed(mean, sd, 0.1, [0.5, 0.5], alpha=ALPHA, power=0.8)
    found = 0
    for _ in range(RUNS):
        result = compare(user_ctrs(rng, control), user_ctrs(rng, treatment, lift=0.1))
        found += result.p_value < ALPHA and result.lift > 0
    # 80% promised; 200 runs give a binomial standard error of 2.8 points: within three of them.
    assert abs(found / RUNS - 0.8) <= 0.085, f"detected in {found} of {RUNS} runs"
    assert abs(detectable_effect(mean, sd, control, 1.0) - 0.1) < 0.002


def test_the_lift_interval_covers_the_true_lift_about_95_percent_of_the_time():
    rng = np.random.default_rng(14)
    covered = 0
    for _ in range(RUNS):
        result = compare(user_ctrs(rng, 3000), user_ctrs(rng, 3000, lift=0.1))
        covered += result.lift_low <= 0.1 <= result.lift_high
    assert covered >= stats.binom.ppf(0.005, RUNS, 0.95)


def test_a_broken_split_is_flagged_and_a_sound_one_is_not():
    assert sample_ratio_mismatch([4500, 5500], [0.5, 0.5]) < SRM_ALPHA
    assert sample_ratio_mismatch([4990, 5010], [0.5, 0.5]) > SRM_ALPHA
    assert sample_ratio_mismatch([2020, 7980], [0.2, 0.8]) > SRM_ALPHA
    # Assignment itself gives sound splits: 10,000 users at 45/55 weights are not flagged against 45/55...
    counts = np.bincount([assign("exp", f"u{n}", [0.45, 0.55]) for n in range(10_000)], minlength=2)
    assert sample_ratio_mismatch(counts, [0.45, 0.55]) > SRM_ALPHA
    # ...and are flagged against the 50/50 that was intended.
    assert sample_ratio_mismatch(counts, [0.5, 0.5]) < SRM_ALPHA


def test_assignment_is_deterministic_even_and_moves_only_the_units_it_must():
    users = [f"user-{n}" for n in range(20_000)]
    first = [assign("boost-sale", u, [0.5, 0.5]) for u in users]
    assert first == [assign("boost-sale", u, [0.5, 0.5]) for u in users]
    assert abs(first.count(0) / len(users) - 0.5) < 0.02
    other = [assign("another", u, [0.5, 0.5]) for u in users]  # experiments are independent of each other
    assert abs(sum(a == b for a, b in zip(first, other, strict=True)) / len(users) - 0.5) < 0.02
    shifted = [assign("boost-sale", u, [0.6, 0.4]) for u in users]  # 50/50 -> 60/40: only ~10% move
    moved = sum(a != b for a, b in zip(first, shifted, strict=True)) / len(users)
    assert 0.08 < moved < 0.12 and all(b == 0 for a, b in zip(first, shifted, strict=True) if a == 0)
    at_10 = [assign("boost-sale", u, [0.5, 0.5], traffic=0.1) for u in users]
    at_20 = [assign("boost-sale", u, [0.5, 0.5], traffic=0.2) for u in users]
    assert abs(sum(a is not None for a in at_10) / len(users) - 0.1) < 0.01
    # Raising the traffic share keeps everyone in, in the same variant, and only adds units.
    assert all(b == a for a, b in zip(at_10, at_20, strict=True) if a is not None)
    assert 0 <= bucket("x", "u") < BUCKETS


def test_the_lift_interval_excludes_zero_exactly_when_the_test_is_significant():
    rng = np.random.default_rng(15)
    agree = 0
    for n in range(RUNS):
        result = compare(user_ctrs(rng, 400), user_ctrs(rng, 400, lift=0.15 * (n % 3)))
        agree += (result.p_value < ALPHA) == (not result.lift_low <= 0 <= result.lift_high)
    assert agree == RUNS
