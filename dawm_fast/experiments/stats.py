"""Statistics for a sweep's report, after Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice" (NeurIPS 2021): the interquartile mean (IQM), stratified-bootstrap confidence
intervals, and the probability of improvement; plus a paired bootstrap for DAWM - plain over
matched seeds.

Written here rather than taken from `rliable` (the library the field uses): rliable 1.2.0 installed
here, but `import rliable.library` fails inside its dependency `arch` 7.2 with pandas 3
(`deprecate_kwarg() missing ... 'new_arg_name'`). The definitions follow rliable's:
`aggregate_iqm` is scipy's `trim_mean(scores, 0.25)` over all runs and tasks, intervals are
percentile intervals of a bootstrap that resamples runs within each task, and the probability of
improvement is the Mann-Whitney U statistic over n*m, averaged over tasks. Tests check each
against a computation by hand.

Scores are given per task as 1-D arrays of runs (seeds); tasks may have different run counts.
"""
from __future__ import annotations

import numpy as np

DEFAULT_REPS = 10_000


def iqm(scores) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (scipy's trim_mean with
    proportiontocut 0.25: int(0.25 n) scores cut from each end)."""
    x = np.sort(np.concatenate([np.ravel(s) for s in scores]) if isinstance(scores, list)
                else np.ravel(scores))
    if x.size == 0:
        return float("nan")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def probability_of_improvement(x: list[np.ndarray], y: list[np.ndarray]) -> float:
    """P(X > Y): for each task, the chance that a run of X scores above a run of Y (ties count
    half), i.e. the Mann-Whitney U statistic over n*m; averaged over tasks."""
    per_task = []
    for xs, ys in zip(x, y):
        xs, ys = np.asarray(xs, float)[:, None], np.asarray(ys, float)[None, :]
        per_task.append(float(((xs > ys) + 0.5 * (xs == ys)).mean()))
    return float(np.mean(per_task))


def stratified_bootstrap_ci(statistic, *groups: list[np.ndarray], reps: int = DEFAULT_REPS,
                            alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of `statistic(*groups)` under a bootstrap that resamples each group's runs
    with replacement within each task (stratified by task), independently per group."""
    rng = np.random.default_rng(seed)
    values = np.empty(reps)
    groups = [[np.asarray(t, float) for t in g] for g in groups]
    for i in range(reps):
        resampled = [[t[rng.integers(0, len(t), len(t))] for t in g] for g in groups]
        values[i] = statistic(*resampled)
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_difference(a, b, reps: int = DEFAULT_REPS, alpha: float = 0.05,
                      seed: int = 0) -> dict:
    """Mean of a_i - b_i over matched seeds, with a percentile bootstrap CI that resamples the
    pairs. With one pair there is no interval (NaN)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    out = {"mean": float(d.mean()) if d.size else float("nan"), "n": int(d.size),
           "ci_low": float("nan"), "ci_high": float("nan")}
    if d.size >= 2:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, d.size, (reps, d.size))].mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(
            means, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
