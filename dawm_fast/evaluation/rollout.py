"""Policy evaluation in Gymnasium MuJoCo envs, and D4RL-normalized scores.

All episodes run side by side: every step, one batched policy call for the envs still running,
then each env steps. Episode i is reset with seed ``seed + i`` whichever env slot runs it, and
MuJoCo envs draw randomness only at reset, so results equal a plain one-env loop over the same
seeds. A list of plain envs (not a gymnasium vector env) keeps this exact without autoreset
bookkeeping and never steps finished episodes; on 2 CPU cores it measured as fast as
SyncVectorEnv and ~2.4x a one-episode-at-a-time loop (AsyncVectorEnv was slower: the cores are
busy and each step pays inter-process traffic).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np



class EnvUnavailableError(RuntimeError):
    pass


@dataclass
class Trajectory:
    observations: np.ndarray            # [L, obs] the states the policy acted in
    rewards: np.ndarray                 # [L]
    terminated: bool                    # ended by the MDP (a fall), not by the time limit


@dataclass
class EvalResult:
    returns: np.ndarray                 # [episodes] undiscounted return; entry i used seed+i
    lengths: np.ndarray                 # [episodes] env steps per episode
    trajectories: list[Trajectory] | None = None   # entry i: episode i (with record=True)
    mean: float = field(init=False)     # mean return
    std: float = field(init=False)      # population std of the returns (np.std)

    def __post_init__(self):
        self.mean = float(np.mean(self.returns))
        self.std = float(np.std(self.returns))


def make_env(env_id: str) -> gym.Env:
    """gym.make with a one-line error that says what is missing."""
    try:
        return gym.make(env_id)
    except (gym.error.DependencyNotInstalled, ImportError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EnvUnavailableError(
            f"cannot make {env_id!r} ({first}); install MuJoCo envs with: "
            "pip install 'gymnasium[mujoco]'") from None
    except gym.error.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EnvUnavailableError(f"cannot make {env_id!r}: {first}") from None


def evaluate_policy(act_fn: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                    seed: int, n_envs: int | None = None, action_noise: float = 0.0,
                    noise_seed: int | None = None, record: bool = False) -> EvalResult:
    """Run ``episodes`` episodes of a policy; episode i is reset with seed+i.

    ``act_fn`` maps raw observations [N, obs] to actions [N, act] (e.g. ``agent.act``).
    ``n_envs`` caps how many episodes run at once (default: all of them); a finished env
    starts the next pending episode, so every episode is counted exactly once.
    ``action_noise`` > 0 adds Gaussian noise of that std to every action, then clips to [-1, 1]
    (the behaviour datasets' rollouts), drawn from one generator seeded with ``noise_seed``
    (default ``seed``): noisy results depend on ``n_envs`` too.
    ``record`` keeps every episode's states and rewards (EvalResult.trajectories).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n_envs = episodes if n_envs is None else min(int(n_envs), episodes)
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    envs = [make_env(env_id) for _ in range(n_envs)]
    act_shape = envs[0].action_space.shape
    noise_rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    returns = np.zeros(episodes, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    obs: list[np.ndarray | None] = [None] * n_envs
    episode_of = [-1] * n_envs      # which episode each env slot is running
    next_episode = 0
    seen: list[list] = [[] for _ in range(episodes)] if record else []   # (obs, reward) steps
    ended_by_mdp = np.zeros(episodes, bool)

    def start(slot: int) -> None:
        nonlocal next_episode
        obs[slot], _ = envs[slot].reset(seed=seed + next_episode)
        episode_of[slot] = next_episode
        next_episode += 1

    try:
        for slot in range(n_envs):
            start(slot)
        running = list(range(n_envs))
        while running:
            actions = np.asarray(act_fn(np.stack([obs[k] for k in running])))  # [n_run, act]
            if actions.shape != (len(running), *act_shape):
                raise ValueError(f"act_fn returned shape {actions.shape} for {len(running)} "
                                 f"observations; expected {(len(running), *act_shape)}")
            if action_noise > 0:
                actions = np.clip(actions + noise_rng.normal(0, action_noise, actions.shape),
                                  -1, 1).astype(np.float32)
            still = []
            for a, slot in zip(actions, running):
                ep = episode_of[slot]
                before = obs[slot]
                obs[slot], r, terminated, truncated, _ = envs[slot].step(a)
                returns[ep] += float(r)
                lengths[ep] += 1
                if record:
                    seen[ep].append((before, float(r)))
                ended_by_mdp[ep] |= terminated
                if not (terminated or truncated):
                    still.append(slot)
                elif next_episode < episodes:
                    start(slot)
                    still.append(slot)
            running = still
    finally:
        for env in envs:
            env.close()
    trajectories = [Trajectory(np.stack([o for o, _ in steps]), np.array([r for _, r in steps]),
                               bool(done)) for steps, done in zip(seen, ended_by_mdp)] \
        if record else None
    return EvalResult(returns, lengths, trajectories)
