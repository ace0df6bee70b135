"""The report's statistics on made-up scores whose answers are known by hand."""
import itertools

import numpy as np
import pytest

from dawm_fast.experiments import stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)        # mean(3, 4, 5, 6)
    # pooled over tasks; int(0.25 * 10) = 2 cut from each end, as scipy's trim_mean
    scores = [np.array([100.0, 1, 2, 3, 4]), np.array([5.0, 6, 7, 8, -100])]
    assert stats.iqm(scores) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))
    assert stats.iqm([np.array([7.0])]) == 7.0


def test_probability_of_improvement_counts_pairs_and_ties():
    assert stats.probability_of_improvement([[3, 4]], [[1, 2]]) == 1.0
    assert stats.probability_of_improvement([[1, 2]], [[3, 4]]) == 0.0
    assert stats.probability_of_improvement([[1, 2, 3]], [[1, 2, 3]]) == pytest.approx(0.5)
    # task 1: x=1 loses, x=3 wins against y=2 -> 0.5; task 2: 2 of 4 pairs win, 1 ties -> 0.625
    p = stats.probability_of_improvement([[1, 3], [5, 6]], [[2], [4, 6]])
    assert p == pytest.approx((0.5 + (1 + 0 + 1 + 0.5) / 4) / 2)


def test_paired_difference_matches_exact_bootstrap():
    a, b = [3.0, 5.0, 7.0], [1.0, 2.0, 3.0]           # differences 2, 3, 4
    out = stats.paired_difference(a, b, reps=40_000, seed=1)
    assert out["mean"] == pytest.approx(3.0) and out["n"] == 3
    # the exact bootstrap distribution: all 27 equally likely resamples of the three pairs
    means = np.array([np.mean(c) for c in itertools.product([2, 3, 4], repeat=3)])
    lo, hi = np.percentile(np.repeat(means, 1000), [2.5, 97.5])
    assert out["ci_low"] == pytest.approx(lo, abs=0.34) and out["ci_high"] == pytest.approx(hi, abs=0.34)
    assert 2 <= out["ci_low"] < 3 < out["ci_high"] <= 4
    one = stats.paired_difference([5.0], [2.0])
    assert one["mean"] == 3.0 and np.isnan(one["ci_low"])


def test_stratified_bootstrap_resamples_within_tasks():
    # constant runs per task: every resample is the same, the interval collapses
    lo, hi = stats.stratified_bootstrap_ci(stats.iqm, [np.full(3, 2.0), np.full(3, 5.0)], reps=200)
    assert lo == hi == pytest.approx(stats.iqm([np.full(3, 2.0), np.full(3, 5.0)]))
    # one task with runs {0, 10}: a resample's mean is 0, 5 or 10 with chances 1/4, 1/2, 1/4, and
    # stratification never mixes a task's runs into another's
    lo, hi = stats.stratified_bootstrap_ci(lambda g: float(np.mean(g[0])), [np.array([0.0, 10.0])],
                                           reps=4000, seed=3)
    assert (lo, hi) == (0.0, 10.0)
    lo, hi = stats.stratified_bootstrap_ci(lambda g: float(np.mean(g[0])), [np.array([0.0, 10.0])],
                                           reps=4000, seed=3, alpha=0.6)
    assert lo == hi == 5.0
    # two groups (probability of improvement): x always above y gives [1, 1]
    lo, hi = stats.stratified_bootstrap_ci(stats.probability_of_improvement,
                                           [np.array([5.0, 6.0])], [np.array([1.0, 2.0])], reps=100)
    assert lo == hi == 1.0


def test_mean_std_uses_sample_std():
    m, s = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.sqrt(5 / 3))
    m, s = stats.mean_std([4.0])
    assert m == 4.0 and np.isnan(s)
