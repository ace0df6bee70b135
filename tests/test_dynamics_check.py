"""The simulator check of synthetic transitions: exact on real steps, sensitive to wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from dawm_fast.data.tasks import env_family
from dawm_fast.evaluation.dynamics_check import (check, pins_down_state, simulate,
                                                 window_falls, window_positions)
from dawm_fast.evaluation.rollout import make_env


@pytest.fixture
def seed(request) -> int:
    s = int(np.random.SeedSequence().entropy % 2**20)
    print(f"{request.node.name}: seed {s}")
    return s


def rollout(env_name: str, n: int, seed: int) -> dict:
    """n real transitions of a smooth random policy, episode after episode."""
    fam = env_family(env_name)
    env = make_env(fam.gym_id_v5)
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                            "terminals")}
    obs, _ = env.reset(seed=seed)
    while len(rows["actions"]) < n:
        a = np.clip(0.5 * np.sin(obs[:fam.act_dim]) + rng.normal(0, 0.3, fam.act_dim), -1, 1)
        nxt, r, term, trunc, _ = env.step(a)
        for k, v in zip(rows, (obs, a, r, nxt, float(term))):
            rows[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return {k: np.asarray(v, np.float64) for k, v in rows.items()}


@pytest.mark.parametrize("env_name", ["hopper", "halfcheetah"])
def test_replay_of_real_steps_is_exact(env_name, seed):
    fam = env_family(env_name)
    real = rollout(env_name, 300, seed)
    ok = pins_down_state(fam, real["observations"])
    assert ok.any()
    nxt, rew, term = simulate(fam, real["observations"][ok], real["actions"][ok])
    np.testing.assert_allclose(nxt, real["next_observations"][ok], atol=1e-9)
    np.testing.assert_allclose(rew, real["rewards"][ok], atol=1e-9)
    np.testing.assert_array_equal(term, real["terminals"][ok] > 0.5)


def test_pins_down_state_leaves_out_clipped_velocities():
    walker, cheetah = env_family("walker2d"), env_family("halfcheetah")
    obs = np.zeros((3, 17))
    obs[1, 7] = 10.0              # a joint angle of 10 is not a velocity
    obs[2, 12] = -10.0            # a clipped velocity
    assert pins_down_state(walker, obs).tolist() == [True, True, False]
    assert pins_down_state(cheetah, obs).all()      # halfcheetah's observation is not clipped


def test_window_positions_follow_the_chain_of_states():
    s = np.arange(12, dtype=float).reshape(6, 2)
    obs = np.stack([s[0], s[1], s[2], s[4], s[5], s[0]])
    nxt = np.stack([s[1], s[2], s[3], s[5], s[0], s[1]])
    assert window_positions(obs, nxt).tolist() == [0, 1, 2, 0, 1, 2]
    nxt[1] = s[5]                 # the chain breaks after step 1
    assert window_positions(obs, nxt).tolist() == [0, 1, 0, 0, 1, 2]


def test_check_scores_real_as_floor_and_perturbed_as_wrong(seed):
    fam = env_family("hopper")
    real = rollout("hopper", 400, seed)
    wrong = {k: v.copy() for k, v in real.items()}
    rng = np.random.default_rng(seed)
    wrong["next_observations"] += rng.normal(0, 0.1, wrong["next_observations"].shape) * \
        real["observations"].std(axis=0)
    wrong["rewards"] += 0.5
    rep = check(fam, wrong, real, n=200, seed=seed)
    assert rep["real_floor"]["state_error"] < 1e-12 and rep["real_floor"]["reward_rmse"] < 1e-9
    # noise of 0.1 std per value: standardized MSE about 0.01
    assert 0.005 < rep["synthetic"]["state_error"] < 0.02
    assert rep["synthetic"]["reward_rmse"] == pytest.approx(0.5, abs=1e-6)
    assert sum(s["n"] for s in rep["synthetic_by_window_step"].values()) == \
        rep["synthetic"]["n"] <= 200


def test_falls_left_out_are_counted_one_step_and_over_windows(seed):
    fam = env_family("hopper")
    real = rollout("hopper", 600, seed)          # a random hopper falls every few dozen steps
    assert real["terminals"].sum() >= 2
    # real episodes as windows: replayed open loop they fall exactly where the data does
    exact = window_falls(fam, real, 1000, np.random.default_rng(seed))
    assert exact["n"] >= 2 and exact["falls"] == exact["simulator_falls"] > 0
    assert exact["falls_left_out"] == exact["falls_made_up"] == 0
    assert abs(exact["return_added"]) < 1e-9
    # the same data with its falls unlabelled: every fall is left out, one step and per window
    hidden = dict(real, terminals=np.zeros_like(real["terminals"]))
    rep = check(fam, hidden, real, n=600, seed=seed)
    assert rep["synthetic"]["falls"] == 0 and rep["real_fall_rate"] > 0
    assert rep["synthetic"]["missed_falls"] > 0 and rep["synthetic"]["made_up_falls"] == 0
    assert rep["windows"]["falls_left_out"] == rep["windows"]["simulator_falls"] > 0
    assert rep["real_floor"]["missed_falls"] == rep["real_floor"]["made_up_falls"] == 0
