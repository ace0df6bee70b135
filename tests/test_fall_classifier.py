"""Synthetic falls: the classifier on (s, a) learns a fall rule from real data, and labelling cuts
each window after its first fall, keeping the health check's falls."""
import numpy as np
import pytest

from dawm_fast.evaluation.dynamics_check import window_positions
from dawm_fast.world_model.fall_classifier import (FallClassifierConfig,
                                                   classify_synthetic_falls, label_falls,
                                                   train_fall_classifier)


@pytest.fixture
def rng(request):
    s = int(np.random.SeedSequence().entropy % 2**31)
    print(f"{request.node.name}: seed {s}")
    return np.random.default_rng(s)


def windows(rng, lengths, obs_dim=3):
    """synthetic.npz rows: each window a chain of states (row i's next state is row i+1's)."""
    parts = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                             "terminals")}
    for n in lengths:
        s = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        parts["observations"].append(s[:-1])
        parts["next_observations"].append(s[1:])
        parts["actions"].append(rng.uniform(-1, 1, (n, 2)).astype(np.float32))
        parts["rewards"].append(rng.normal(size=n).astype(np.float32))
        parts["terminals"].append(np.zeros(n, np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_label_falls_cuts_each_window_after_its_first_fall(rng):
    syn = windows(rng, [3, 1, 7, 2])                  # rows 0-2 | 3 | 4-10 | 11-12
    syn["terminals"][12] = 1.0                        # a health-check fall, last row of a window
    syn["terminals"][10] = 1.0                        # one after a classifier fall (6): dropped
    p = np.zeros(13)
    p[[1, 3, 6, 8]] = 0.9                             # classifier falls (8: after 6, same window)
    p[12] = 0.1
    out, counts = label_falls(syn, p, threshold=0.5)
    kept = [0, 1, 3, 4, 5, 6, 11, 12]
    for k in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_array_equal(out[k], syn[k][kept])
    np.testing.assert_array_equal(out["terminals"], [0, 1, 1, 0, 0, 1, 0, 1])
    assert counts == {"falls_marked_by_health_check": 2, "falls_added_by_classifier": 3,
                      "rows_dropped_after_falls": 5, "synthetic_falls": 4}
    # what is left still reads as the same windows, each ending at its fall
    assert window_positions(out["observations"], out["next_observations"]).tolist() == \
        [0, 1, 0, 0, 1, 2, 0, 1]


def test_label_falls_below_threshold_changes_nothing(rng):
    syn = windows(rng, [4, 5])
    syn["terminals"][3] = 1.0
    out, counts = label_falls(syn, np.full(9, 0.49), threshold=0.5)
    for k in syn:
        np.testing.assert_array_equal(out[k], syn[k])
    assert counts["falls_added_by_classifier"] == counts["rows_dropped_after_falls"] == 0


def test_classifier_learns_a_fall_rule_and_is_seeded(rng):
    obs = rng.normal(size=(6000, 4)).astype(np.float32)
    act = rng.uniform(-1, 1, (6000, 2)).astype(np.float32)
    falls = (obs[:, 0] + act[:, 0] > 1.8)             # ~5% of rows, decided by (s, a)
    cfg = FallClassifierConfig(n_steps=1500, hidden=64, lr=1e-3, holdout_frac=0.2)
    predict, report = train_fall_classifier(obs, act, falls, cfg, "cpu", seed=3)
    assert report["classifier_heldout_recall"] > 0.7
    assert report["classifier_heldout_false_alarms"] < 0.02
    assert abs(report["classifier_heldout_fall_rate"] - falls.mean()) < 0.02
    probe_o, probe_a = obs[:500], act[:500]
    again, _ = train_fall_classifier(obs, act, falls, cfg, "cpu", seed=3)
    np.testing.assert_array_equal(predict(probe_o, probe_a), again(probe_o, probe_a))
    other, _ = train_fall_classifier(obs, act, falls, cfg, "cpu", seed=4)
    assert not np.array_equal(predict(probe_o, probe_a), other(probe_o, probe_a))


def test_data_without_falls_leaves_the_synthetic_arrays_alone(rng):
    syn = windows(rng, [4, 3])
    real = {"observations": rng.normal(size=(50, 3)), "actions": rng.uniform(-1, 1, (50, 2)),
            "terminals": np.zeros(50)}
    out, info = classify_synthetic_falls(syn, real, lambda o: o, FallClassifierConfig(), "cpu",
                                         seed=0)
    assert out is syn and "no falls" in info["fall_classifier"]
