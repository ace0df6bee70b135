"""Trajectory windows for the world model.

A window starting at step t of an episode holds (s_t, a_t, g_t), the following T-1 states
s_{t+1..t+T-1} and the T rewards r_t..r_{t+T-1}. g_t is the discounted return-to-go to the end of
the episode divided by the task's scale. Windows never cross an episode boundary: every step of a
window lies in the window's episode. Terminal and timeout flags are kept apart: only a terminal is
a true end of the MDP; a timeout is a cut made by the time limit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import OfflineDataset


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


def window_starts(episode_ends: np.ndarray, horizon: int) -> np.ndarray:
    """Rows t whose steps t .. t+horizon-1 all lie in t's episode."""
    ends = np.flatnonzero(episode_ends)
    starts = np.concatenate([[0], ends[:-1] + 1])
    out = [np.arange(s, e - horizon + 2) for s, e in zip(starts, ends) if e - s + 1 >= horizon]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def make_windows(ds: OfflineDataset, horizon: int, gamma: float, rtg_scale: float
                 ) -> TrajectoryWindows:
    ends = ds.episode_ends
    starts = window_starts(ends, horizon)
    idx = starts[:, None] + np.arange(horizon)[None, :]     # [M, T]
    rtg = discounted_returns_to_go(ds.rewards, ends, gamma)
    return TrajectoryWindows(
        states=ds.observations[idx],
        first_actions=ds.actions[starts],
        rewards=ds.rewards[idx],
        returns_to_go=(rtg[starts] / rtg_scale).astype(np.float32),
        terminals=ds.terminals[idx],
        timeouts=ds.timeouts[idx],
        start_index=starts,
    )
