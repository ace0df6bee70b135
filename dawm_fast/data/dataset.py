"""The offline dataset every stage consumes: flat transition arrays plus where they came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says which file or name and what to do."""


@dataclass
class OfflineDataset:
    name: str                        # task name, e.g. "walker2d-medium-expert"
    observations: np.ndarray         # [N, obs_dim] float32
    actions: np.ndarray              # [N, act_dim] float32
    rewards: np.ndarray              # [N] float32
    next_observations: np.ndarray    # [N, obs_dim] float32
    terminals: np.ndarray            # [N] bool: the env terminated after this step
    timeouts: np.ndarray             # [N] bool: the episode was cut (time limit) after this step
    source: str                      # where the data came from, said in every log and result
    eval_env_id: str                 # Gymnasium env to evaluate policies trained on this data
    ref_min_score: float | None = None   # the dataset's own reference returns (Minari's), if any
    ref_max_score: float | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.observations)
        for key in ("actions", "rewards", "next_observations", "terminals", "timeouts"):
            if len(getattr(self, key)) != n:
                raise DatasetError(f"{self.source}: '{key}' has {len(getattr(self, key))} rows "
                                   f"but 'observations' has {n}")
        for key in ("observations", "actions", "rewards", "next_observations"):
            if not np.isfinite(getattr(self, key)).all():
                raise DatasetError(f"{self.source}: '{key}' contains NaN or inf values; "
                                   f"the file is corrupt or was written wrongly")
        if n == 0:
            raise DatasetError(f"{self.source}: the dataset holds no transitions")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def episode_ends(self) -> np.ndarray:
        """[N] bool: the last step of an episode (terminal, timeout, or the data's last row)."""
        ends = self.terminals | self.timeouts
        ends = ends.copy()
        ends[-1] = True
        return ends

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in order."""
        ends = np.flatnonzero(self.episode_ends)
        csum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        starts = np.concatenate([[0], ends[:-1] + 1])
        return csum[ends + 1] - csum[starts]

    def summary(self) -> str:
        rets = self.episode_returns()
        return (f"{self.name}: {len(self):,} transitions, {len(rets)} episodes, "
                f"return {rets.mean():.1f} ± {rets.std():.1f}, source: {self.source}")


def from_episodes(name: str, episodes: list[dict], source: str, eval_env_id: str,
                  **kw) -> OfflineDataset:
    """Flatten whole episodes (observations with N+1 rows, actions/rewards/terminations/
    truncations with N rows: Minari's layout) into an OfflineDataset."""
    obs, nxt, act, rew, term, trunc = [], [], [], [], [], []
    for ep in episodes:
        o = np.asarray(ep["observations"], np.float32)
        n = len(ep["actions"])
        if len(o) != n + 1:
            raise DatasetError(f"{source}: an episode has {len(o)} observations for {n} actions "
                               f"(expected {n + 1})")
        for key in ("actions", "rewards", "terminations", "truncations"):
            v = np.asarray(ep[key])
            if v.dtype.kind not in "fiub":
                raise DatasetError(f"{source}: '{key}' holds {v.dtype} values, not numbers; the "
                                   f"dataset is corrupt or was written wrongly")
            if v.ndim == 0 or len(v) != n or n == 0:
                raise DatasetError(f"{source}: an episode has {len(v) if v.ndim else 0} "
                                   f"'{key}' for {n} actions; the dataset is inconsistent")
        obs.append(o[:-1])
        nxt.append(o[1:])
        act.append(np.asarray(ep["actions"], np.float32))
        rew.append(np.asarray(ep["rewards"], np.float32))
        t = np.asarray(ep["terminations"], bool)
        tr = np.asarray(ep["truncations"], bool).copy()
        # An episode that stops without a termination was cut short: mark it as a timeout so
        # windows and TD targets never treat the cut as a true end.
        if not t[-1] and not tr[-1]:
            tr[-1] = True
        term.append(t)
        trunc.append(tr)
    if not episodes:
        raise DatasetError(f"{source}: the dataset holds no episodes")
    return OfflineDataset(name, np.concatenate(obs), np.concatenate(act), np.concatenate(rew),
                          np.concatenate(nxt), np.concatenate(term), np.concatenate(trunc),
                          source, eval_env_id, **kw)


def concatenate(name: str, parts: list[OfflineDataset], source: str) -> OfflineDataset:
    """medium-expert = medium followed by expert (the D4RL recipe)."""
    cat = lambda key: np.concatenate([getattr(p, key) for p in parts])
    timeouts = cat("timeouts")
    # Each part's last row ends an episode, so no episode spans the seam.
    for end in np.cumsum([len(p) for p in parts]) - 1:
        if not cat("terminals")[end]:
            timeouts[end] = True
    refs = {p.ref_min_score for p in parts}, {p.ref_max_score for p in parts}
    return OfflineDataset(name, cat("observations"), cat("actions"), cat("rewards"),
                          cat("next_observations"), cat("terminals"), timeouts, source,
                          parts[0].eval_env_id,
                          ref_min_score=min(refs[0]) if None not in refs[0] else None,
                          ref_max_score=max(refs[1]) if None not in refs[1] else None)


def subset_episodes(ds: OfflineDataset, max_transitions: int, seed: int) -> OfflineDataset:
    """Whole episodes drawn in a seeded random order until `max_transitions` is reached (so a
    medium-expert subset keeps both halves), kept in their original order."""
    if len(ds) <= max_transitions:
        return ds
    ends = np.flatnonzero(ds.episode_ends)
    starts = np.concatenate([[0], ends[:-1] + 1])
    order = np.random.default_rng(seed).permutation(len(ends))
    lengths = (ends - starts + 1)[order]
    n_keep = max(1, int(np.searchsorted(np.cumsum(lengths), max_transitions, side="right")))
    return _keep_episodes(ds, np.sort(order[:n_keep]), starts, ends)


def subset_episode_fraction(ds: OfflineDataset, fraction: float, seed: int) -> OfflineDataset:
    """A seeded random `fraction` of the dataset's whole episodes (at least one), kept in their
    original order: the little-data setting."""
    if fraction >= 1.0:
        return ds
    ends = np.flatnonzero(ds.episode_ends)
    starts = np.concatenate([[0], ends[:-1] + 1])
    n_keep = max(1, int(round(fraction * len(ends))))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(ends))[:n_keep])
    return _keep_episodes(ds, chosen, starts, ends)


def run_subset(ds: OfflineDataset, max_transitions: int | None, episode_fraction: float,
               seed: int) -> OfflineDataset:
    """The part of `ds` a run trains on (its config's max_transitions, episode_fraction, seed):
    the one place the pipeline and the diagnosis scripts cut it."""
    if max_transitions is not None:
        ds = subset_episodes(ds, max_transitions, seed)
    return subset_episode_fraction(ds, episode_fraction, seed)


def _keep_episodes(ds: OfflineDataset, chosen: np.ndarray, starts: np.ndarray,
                   ends: np.ndarray) -> OfflineDataset:
    rows = np.concatenate([np.arange(starts[i], ends[i] + 1) for i in chosen])
    pick = lambda key: getattr(ds, key)[rows]
    # an episode that ended at the data's last row carries no flag there: mark it a timeout
    timeouts = pick("timeouts") | (ds.episode_ends[rows] & ~pick("terminals"))
    return OfflineDataset(ds.name, pick("observations"), pick("actions"), pick("rewards"),
                          pick("next_observations"), pick("terminals"), timeouts,
                          f"{ds.source}, {len(chosen)} of {len(ends)} episodes", ds.eval_env_id,
                          ds.ref_min_score, ds.ref_max_score, dict(ds.info))
