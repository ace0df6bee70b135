"""Policy evaluation: exact per-episode accounting against a plain loop, and score math.

Seeds are fresh every run; each test prints its seed (pytest shows it on failure).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from dawm_fast.data.tasks import ENV_FAMILIES
from dawm_fast.evaluation import EnvUnavailableError, evaluate_policy, normalized_score


@pytest.fixture
def seed(request) -> int:
    s = int(np.random.SeedSequence().entropy % 2**20)
    print(f"{request.node.name}: seed {s}")
    return s


def hand_loop(policy, env_id: str, episodes: int, seed: int):
    """The reference: one env, one episode at a time, one observation per policy call."""
    env = gym.make(env_id)
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        ret, n, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs[None])[0])
            ret += float(r)
            n += 1
            done = term or trunc
        returns.append(ret)
        lengths.append(n)
    env.close()
    return np.array(returns), np.array(lengths)


class CountingPolicy:
    """Wraps a row-wise policy and counts the observations it is asked about."""

    def __init__(self, fn):
        self.fn, self.rows, self.calls = fn, 0, 0

    def __call__(self, obs):
        self.rows += len(obs)
        self.calls += 1
        return self.fn(obs)


def zero_walker(obs):
    return np.zeros((len(obs), 6))


def test_zero_action_walker_matches_hand_loop(seed):
    policy = CountingPolicy(zero_walker)
    res = evaluate_policy(policy, "Walker2d-v5", episodes=2, seed=seed)
    ref_ret, ref_len = hand_loop(zero_walker, "Walker2d-v5", 2, seed)
    np.testing.assert_array_equal(res.returns, ref_ret)
    np.testing.assert_array_equal(res.lengths, ref_len)
    # Each step of each episode is asked for exactly once: no autoreset steps, no extra episode.
    assert policy.rows == ref_len.sum()
    assert policy.calls == ref_len.max()          # both episodes advance in the same calls
    assert res.mean == pytest.approx(ref_ret.mean()) and res.std == pytest.approx(ref_ret.std())
    assert len(set(ref_len.tolist())) > 1 or ref_ret[0] != ref_ret[1]   # seeds differ


def test_fewer_envs_than_episodes_counts_each_episode_once(seed):
    # A state-dependent, row-wise policy: trajectories differ per episode and batching is exact.
    def policy(obs):
        return 0.3 * np.tanh(obs[:, 2:5])

    counting = CountingPolicy(policy)
    res = evaluate_policy(counting, "Hopper-v5", episodes=5, seed=seed, n_envs=2)
    ref_ret, ref_len = hand_loop(policy, "Hopper-v5", 5, seed)
    np.testing.assert_array_equal(res.returns, ref_ret)
    np.testing.assert_array_equal(res.lengths, ref_len)
    assert counting.rows == ref_len.sum()
    assert res.returns.shape == (5,)


def test_recorded_trajectories_match_a_hand_loop(seed):
    """record=True: each episode's states (before each step), rewards and whether the MDP ended
    it, whichever env slot ran it; a hopper pushed hard falls, a short time limit cuts."""
    def policy(obs):
        return np.clip(2.0 * np.tanh(obs[:, 2:5]) + 0.5, -1, 1)

    res = evaluate_policy(policy, "Hopper-v5", episodes=3, seed=seed, n_envs=2, record=True)
    env = gym.make("Hopper-v5", max_episode_steps=1000)
    for i, traj in enumerate(res.trajectories):
        obs, _ = env.reset(seed=seed + i)
        states, rewards, done, term = [], [], False, False
        while not done:
            states.append(obs)
            obs, r, term, trunc, _ = env.step(policy(obs[None])[0])
            rewards.append(r)
            done = term or trunc
        np.testing.assert_array_equal(traj.observations, np.stack(states))
        np.testing.assert_array_equal(traj.rewards, rewards)
        assert traj.terminated == term and len(traj.rewards) == res.lengths[i]
        assert traj.rewards.sum() == pytest.approx(res.returns[i])
    env.close()
    assert all(t.terminated for t in res.trajectories)      # this policy falls within 1000 steps
    assert evaluate_policy(policy, "Hopper-v5", episodes=1, seed=seed).trajectories is None


def test_time_limit_truncation_ends_episodes(seed):
    # HalfCheetah never terminates: a short TimeLimit checks that truncation ends episodes too.
    env_id = "DawmTestShortCheetah-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.mujoco.half_cheetah_v5:HalfCheetahEnv",
                     max_episode_steps=25)

    def policy(obs):
        return 0.5 * np.sin(obs[:, :6])

    res = evaluate_policy(policy, env_id, episodes=3, seed=seed, n_envs=2)
    ref_ret, ref_len = hand_loop(policy, env_id, 3, seed)
    np.testing.assert_array_equal(res.lengths, [25, 25, 25])
    np.testing.assert_array_equal(res.returns, ref_ret)


def test_action_noise_one_env_matches_a_noisy_hand_loop(seed):
    """With n_envs=1 the noise is drawn step by step, episode after episode, from one generator:
    the same draws as a plain noisy loop; noise changes the returns and stays inside [-1, 1]."""
    def policy(obs):
        return 0.9 * np.tanh(obs[:, 2:5])

    seen = []

    def noisy_hand_policy(obs, rng=np.random.default_rng(seed + 1)):
        a = np.clip(policy(obs) + rng.normal(0, 0.3, (1, 3)), -1, 1).astype(np.float32)
        seen.append(a)
        return a

    res = evaluate_policy(policy, "Hopper-v5", episodes=3, seed=seed, n_envs=1,
                          action_noise=0.3, noise_seed=seed + 1)
    ref_ret, ref_len = hand_loop(noisy_hand_policy, "Hopper-v5", 3, seed)
    np.testing.assert_array_equal(res.returns, ref_ret)
    np.testing.assert_array_equal(res.lengths, ref_len)
    assert np.abs(np.concatenate(seen)).max() <= 1.0
    plain = evaluate_policy(policy, "Hopper-v5", episodes=3, seed=seed, n_envs=1)
    assert not np.array_equal(plain.returns, res.returns)
    again = evaluate_policy(policy, "Hopper-v5", episodes=3, seed=seed, n_envs=3,
                            action_noise=0.3, noise_seed=seed + 1)
    np.testing.assert_array_equal(
        again.returns, evaluate_policy(policy, "Hopper-v5", episodes=3, seed=seed, n_envs=3,
                                       action_noise=0.3, noise_seed=seed + 1).returns)


def test_bad_action_shape_is_reported():
    with pytest.raises(ValueError, match="act_fn returned shape"):
        evaluate_policy(lambda o: np.zeros((len(o), 5)), "Walker2d-v5", episodes=1, seed=0)


def test_unavailable_env_gives_one_line_error(monkeypatch):
    with pytest.raises(EnvUnavailableError) as e:
        evaluate_policy(zero_walker, "NoSuchEnv-v0", episodes=1, seed=0)
    assert "\n" not in str(e.value) and "NoSuchEnv-v0" in str(e.value)

    def no_mujoco(*args, **kwargs):
        raise gym.error.DependencyNotInstalled(
            'MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`\nmore detail')

    monkeypatch.setattr(gym, "make", no_mujoco)
    with pytest.raises(EnvUnavailableError) as e:
        evaluate_policy(zero_walker, "Walker2d-v5", episodes=1, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'gymnasium[mujoco]'" in msg and "Walker2d-v5" in msg


@pytest.mark.parametrize("family", list(ENV_FAMILIES))
def test_normalized_score_d4rl_reference(seed, family):
    fam = ENV_FAMILIES[family]
    returns = np.random.default_rng(seed).uniform(-500, 5000, size=7)
    expected = 100 * (returns - fam.d4rl_min) / (fam.d4rl_max - fam.d4rl_min)
    for name in (family, f"{family}-medium-replay", fam.gym_id_v5):
        scores, label = normalized_score(name, returns)
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        assert label.startswith(f"D4RL ({family}: random ")
    # The endpoints map to 0 and 100.
    ends, _ = normalized_score(family, [fam.d4rl_min, fam.d4rl_max])
    np.testing.assert_allclose(ends, [0.0, 100.0], atol=1e-9)


def test_normalized_score_labels_and_dataset_reference(seed):
    assert normalized_score("hopper", [0.0])[1] == "D4RL (hopper: random -20.27, expert 3234.3)"
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.uniform(-100, 4000, size=2))
    returns = rng.uniform(lo, hi, size=4)
    scores, label = normalized_score("walker2d", returns, ref_min=lo, ref_max=hi)
    np.testing.assert_allclose(scores, 100 * (returns - lo) / (hi - lo), rtol=1e-12)
    assert label == f"dataset (min {round(lo, 2):g}, max {round(hi, 2):g})"
    with pytest.raises(ValueError, match="both"):
        normalized_score("walker2d", returns, ref_min=lo)
    with pytest.raises(ValueError, match="must exceed"):
        normalized_score("walker2d", returns, ref_min=hi, ref_max=lo)
    with pytest.raises(ValueError, match="unknown env"):
        normalized_score("ant", returns)
