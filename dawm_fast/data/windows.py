"""Trajectory windows for the world model.

A window starting at step t of an episode holds (s_t, a_t, g_t), the following T-1 states
s_{t+1..t+T-1} and the T rewards r_t..r_{t+T-1}. g_t is the discounted return-to-go to the end of
the episode divided by the task's scale. Terminal and timeout flags are kept apart: only a terminal
is a true end of the MDP; a timeout is a cut made by the time limit.

Windows never cross into another episode. An episode that ends in a terminal (a fall) also gives
windows that start in its last T-1 steps and run past the fall (``past_falls``): the state after
the fall (the dataset's last next observation) fills the rest of the window, with the falling
step's own reward held (``past_reward="hold"``) or reward 0 (``"zero"``, an absorbing state's).
Without them a world model never sees a fallen state: the last window of an episode ends at the
state before the fall, so its generated windows fall only by extrapolation, and from starts near
a fall (never a training start) it continues as if nothing happened (measured on hopper-medium-
replay, benchmarks/RESULTS.md: synthetic windows fell about half as often as the data). After a
timeout nothing is known, so no window runs past one.

Generation cuts a window at its fall, so the rewards after it are never used; they only decide
what the reward channel has to learn: zeros put a step of its own after every fall (hopper-
medium-replay: 2 reward-stds below the mean), and the synthetic rewards of a model trained on
them came out further from the simulator's everywhere, fast hops most (benchmarks/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import OfflineDataset

PAST_FALL_REWARDS = ("zero", "hold")


@dataclass
class TrajectoryWindows:
    states: np.ndarray          # [M, T, obs_dim]  s_t .. s_{t+T-1}
    first_actions: np.ndarray   # [M, act_dim]     a_t
    rewards: np.ndarray         # [M, T]           r_t .. r_{t+T-1}
    returns_to_go: np.ndarray   # [M]              g_t / scale
    terminals: np.ndarray       # [M, T] bool      the env terminated after that step
    timeouts: np.ndarray        # [M, T] bool      the episode was cut after that step
    start_index: np.ndarray     # [M]              t, the dataset row of the window's first step

    def __len__(self) -> int:
        return len(self.start_index)


def discounted_returns_to_go(rewards: np.ndarray, episode_ends: np.ndarray,
                             gamma: float) -> np.ndarray:
    """g_t = sum_{k=t}^{end(t)} gamma^(k-t) r_k for every row, restarting at each episode end."""
    g = np.zeros(len(rewards), np.float64)
    running = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        if episode_ends[i]:
            running = 0.0
        running = rewards[i] + gamma * running
        g[i] = running
    return g


def window_starts(episode_ends: np.ndarray, horizon: int,
                  terminals: np.ndarray | None = None) -> np.ndarray:
    """Rows t whose steps t .. t+horizon-1 all lie in t's episode; with `terminals` [N] (runs
    past falls), also every later row of an episode whose last step is a terminal."""
    ends = np.flatnonzero(episode_ends)
    starts = np.concatenate([[0], ends[:-1] + 1])
    out = []
    for s, e in zip(starts, ends):
        if terminals is not None and terminals[e]:
            out.append(np.arange(s, e + 1))
        elif e - s + 1 >= horizon:
            out.append(np.arange(s, e - horizon + 2))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def make_windows(ds: OfflineDataset, horizon: int, gamma: float, rtg_scale: float,
                 past_falls: bool = True, past_reward: str = "hold") -> TrajectoryWindows:
    if past_reward not in PAST_FALL_REWARDS:
        raise ValueError(f"past_reward must be one of {PAST_FALL_REWARDS}, got {past_reward!r}")
    ends = ds.episode_ends
    starts = window_starts(ends, horizon, ds.terminals if past_falls else None)
    end_rows = np.flatnonzero(ends)
    last = end_rows[np.searchsorted(end_rows, starts)]     # [M] the row ending t's episode
    idx = starts[:, None] + np.arange(horizon)[None, :]     # [M, T]
    past = idx > last[:, None]                              # [M, T] after the fall (past_falls)
    idx = np.minimum(idx, last[:, None])
    rtg = discounted_returns_to_go(ds.rewards, ends, gamma)
    states = ds.observations[idx]                          # [M, T, obs] (a copy: gathered)
    rewards = ds.rewards[idx]                              # [M, T]
    window, step = np.nonzero(past)
    states[window, step] = ds.next_observations[last[window]]   # the fallen state, held
    rewards[window, step] = 0.0 if past_reward == "zero" else ds.rewards[last[window]]
    return TrajectoryWindows(
        states=states,
        first_actions=ds.actions[starts],
        rewards=rewards,
        returns_to_go=(rtg[starts] / rtg_scale).astype(np.float32),
        terminals=ds.terminals[idx] & ~past,
        timeouts=ds.timeouts[idx] & ~past,
        start_index=starts,
    )
