"""Return parity: the smoke pipeline with both backends on the same seed must give the same
synthetic data (up to sampling noise: a two-sample KS test per dimension) and the same returns (up
to evaluation noise).

Data: the embedded walker2d-medium-expert datasets when their behaviour policies are committed
(generated on first use, ~2 min); before that, small datasets from random-weight policies in a
private store, which checks parity just as well but scores nothing meaningful (``data_source`` in
the benchmark's extra_info says which).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import record
from dawm_fast import train
from dawm_fast.data import embedded
from dawm_fast.data.tasks import env_family

ENV = "walker2d-medium-expert"


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory):
    family = env_family(ENV)
    if (embedded.POLICY_DIR / f"{family.name}.npz").exists():
        yield "embedded walker2d policies"
        return
    with embedded.random_policy_store(tmp_path_factory.mktemp("parity"), family):
        yield "random-weight policies (no walker2d behaviour policies committed yet): parity only"


def run_pipeline(out, backend: str, seed: int) -> tuple[dict, dict]:
    code = train.main(["--env", ENV, "--preset", "smoke", "--backend", backend, "--seed",
                       str(seed), "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    with np.load(out / "synthetic.npz") as z:
        syn = {k: z[k] for k in z.files}
    return res, syn


@pytest.mark.parametrize("seed", [0])
def test_fast_and_reference_give_the_same_science(benchmark, tmp_path, seed, parity_data):
    out = {b: tmp_path / b for b in ("reference", "fast")}
    results = {}

    def both():
        for b in out:
            results[b] = run_pipeline(out[b], b, seed)

    benchmark.pedantic(both, rounds=1, iterations=1)
    (res_r, syn_r), (res_f, syn_f) = results["reference"], results["fast"]
    n_r, n_f = len(syn_r["rewards"]), len(syn_f["rewards"])
    cols = {"reward": (syn_r["rewards"], syn_f["rewards"])}
    cols.update({f"state[{d}]": (syn_r["observations"][:, d], syn_f["observations"][:, d])
                 for d in range(syn_r["observations"].shape[1])})
    stats = {}
    for name, (a, b) in cols.items():
        scale = a.std() + 1e-8
        stats[name] = {"mean_diff_in_std": float(abs(a.mean() - b.mean()) / scale),
                       "std_ratio": float(b.std() / scale), "ks": ks_statistic(a, b)}
    worst_ks = max(s["ks"] for s in stats.values())
    ks_critical = 1.95 * np.sqrt((n_r + n_f) / (n_r * n_f))     # alpha = 0.001
    eps = res_r["final_eval_episodes"]
    score_noise = 3 * np.sqrt((res_r["final_score_std"] ** 2 + res_f["final_score_std"] ** 2)
                              / eps) + 2.0
    record(benchmark, env=ENV, seed=seed, reference_score=res_r["final_score_mean"],
           fast_score=res_f["final_score_mean"], score_tolerance=score_noise,
           synthetic_counts=[n_r, n_f], worst_ks=worst_ks, ks_critical=ks_critical,
           per_dimension=stats, data_source=res_r["dataset_source"], policies=parity_data)
    assert abs(n_r - n_f) <= max(2, 0.01 * n_r), (n_r, n_f)
    assert worst_ks < ks_critical, stats
    assert abs(res_r["final_score_mean"] - res_f["final_score_mean"]) <= score_noise
