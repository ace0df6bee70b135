"""Offline transition data for TD3+BC and IQL: a tensor container, a real/synthetic mixed sampler,
and the data preprocessing CORL applies before training (observation normalization, IQL reward
scaling).

Synthetic transitions from the world model arrive here as plain arrays, exactly like the real
dataset; nothing in ``dawm_fast.rl`` knows how they were made.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


@dataclass(frozen=True)
class Transitions:
    """One-step transitions (s, a, r, s', terminal) as float32 tensors on one device."""

    observations: torch.Tensor        # [N, obs]
    actions: torch.Tensor             # [N, act]
    rewards: torch.Tensor             # [N]
    next_observations: torch.Tensor   # [N, obs]
    terminals: torch.Tensor           # [N] 1.0 where s' is a true terminal (no bootstrap)

    def __post_init__(self):
        obs, act, rew, nxt, term = (getattr(self, f) for f in FIELDS)
        for name, t, ndim in (("observations", obs, 2), ("actions", act, 2), ("rewards", rew, 1),
                              ("next_observations", nxt, 2), ("terminals", term, 1)):
            if t.ndim != ndim:
                raise ValueError(f"Transitions.{name} must be {ndim}-D, got shape {tuple(t.shape)}")
        n = obs.shape[0]
        for name in FIELDS[1:]:
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"Transitions.{name} has {getattr(self, name).shape[0]} rows but "
                                 f"observations has {n}")
        if nxt.shape[1] != obs.shape[1]:
            raise ValueError(f"next_observations dim {nxt.shape[1]} != observations dim "
                             f"{obs.shape[1]}")
        devices = {t.device for t in (obs, act, rew, nxt, term)}
        if len(devices) != 1:
            raise ValueError(f"Transitions fields are on several devices: {devices}")

    @classmethod
    def from_numpy(cls, observations, actions=None, rewards=None, next_observations=None,
                   terminals=None, device: str | torch.device = "cpu") -> "Transitions":
        """From five arrays, or from one mapping with the D4RL keys (extra keys are ignored).

        Rewards/terminals may be [N] or [N, 1]; terminals may be bool. Everything becomes float32.
        """
        if isinstance(observations, Mapping):
            missing = [k for k in FIELDS if k not in observations]
            if missing:
                raise ValueError(f"transition dict lacks keys {missing}; it has "
                                 f"{sorted(observations)}")
            arrays = [observations[k] for k in FIELDS]
        else:
            arrays = [observations, actions, rewards, next_observations, terminals]
            missing = [k for k, a in zip(FIELDS, arrays) if a is None]
            if missing:
                raise ValueError(f"Transitions.from_numpy needs all five arrays; missing {missing}")
        tensors = []
        for name, a in zip(FIELDS, arrays):
            a = np.asarray(a, dtype=np.float32)
            if name in ("rewards", "terminals") and a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]     # CORL-style [N, 1] columns
            tensors.append(torch.as_tensor(a).to(device))
        return cls(*tensors)

    def __len__(self) -> int:
        return self.observations.shape[0]

    @property
    def device(self) -> torch.device:
        return self.observations.device

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def to(self, device: str | torch.device) -> "Transitions":
        return Transitions(*(getattr(self, f).to(device) for f in FIELDS))

    def index(self, idx: torch.Tensor) -> "Transitions":
        """Rows ``idx`` (a LongTensor on the data's device)."""
        return Transitions(*(getattr(self, f).index_select(0, idx) for f in FIELDS))

    def normalized(self, mean, std) -> "Transitions":
        """(s - mean) / std on observations and next_observations (CORL ``normalize_states``)."""
        mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        std = torch.as_tensor(std, dtype=torch.float32, device=self.device)
        return Transitions((self.observations - mean) / std, self.actions, self.rewards,
                           (self.next_observations - mean) / std, self.terminals)

    def scaled_rewards(self, scale: float) -> "Transitions":
        return Transitions(self.observations, self.actions, self.rewards * scale,
                           self.next_observations, self.terminals)


def concat(parts: list[Transitions]) -> Transitions:
    return Transitions(*(torch.cat([getattr(p, f) for p in parts]) for f in FIELDS))


def compute_obs_stats(observations, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (mean, std + eps) of the REAL dataset's observations, as float32 [obs].

    CORL's ``compute_mean_std(states, eps=1e-3)``; the eps keeps constant dimensions finite.
    Synthetic data is normalized with these same statistics, so the agent sees one input scale.
    """
    if isinstance(observations, torch.Tensor):
        observations = observations.detach().cpu().numpy()
    x = np.asarray(observations, dtype=np.float64)    # float64: 2M-row sums stay accurate
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"compute_obs_stats needs a non-empty [N, obs] array, got {x.shape}")
    return x.mean(0).astype(np.float32), (x.std(0) + eps).astype(np.float32)


def episode_returns(rewards, episode_ends) -> np.ndarray:
    """Undiscounted returns of the complete episodes; ``episode_ends`` flags each episode's last
    transition (terminal or timeout). A trailing unflagged fragment is an unfinished episode and
    is left out (as CORL's ``return_reward_range`` does)."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    ends = np.asarray(episode_ends).reshape(-1).astype(bool)
    if r.shape != ends.shape:
        raise ValueError(f"rewards ({r.shape[0]}) and episode_ends ({ends.shape[0]}) differ in "
                         "length")
    last = np.flatnonzero(ends)
    if last.size == 0:
        raise ValueError("episode_ends flags no episode end: cannot compute episode returns")
    csum = np.concatenate([[0.0], np.cumsum(r)])
    starts = np.concatenate([[0], last[:-1] + 1])
    return csum[last + 1] - csum[starts]


def iql_reward_scale(rewards, episode_ends, horizon: float = 1000.0) -> float:
    """CORL's locomotion reward normalization for IQL: multiply rewards by
    ``horizon / (max episode return - min episode return)`` of the REAL dataset.

    Apply the same factor to synthetic rewards so both sources share one reward scale.
    """
    rets = episode_returns(rewards, episode_ends)
    spread = float(rets.max() - rets.min())
    if spread <= 0:
        raise ValueError(f"all {rets.size} episodes have the same return {rets[0]:.3f}: "
                         "the IQL reward scale is undefined")
    return horizon / spread


class MixedSampler:
    """Batches with ``round(batch_size * synthetic_ratio)`` synthetic rows and the rest real.

    The two sources are concatenated once so a batch is one index draw plus one gather per field;
    indices come from ``generator`` on the data's device, so a seeded generator (whose state the
    training loop checkpoints through ``state_dict``) replays the same batches. Ratio 0, or no
    synthetic data, is the plain offline baseline on the same code path.
    """

    def __init__(self, real: Transitions, synthetic: Transitions | None, synthetic_ratio: float,
                 batch_size: int, generator: torch.Generator):
        if not (0.0 <= synthetic_ratio <= 1.0):     # also rejects NaN
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        batch_size = int(batch_size)
        n_syn = batch_size - self.real_rows(batch_size, synthetic_ratio)
        if n_syn > 0 and (synthetic is None or len(synthetic) == 0):
            raise ValueError(f"synthetic_ratio={synthetic_ratio} needs synthetic transitions, "
                             "but none were given")
        if batch_size - n_syn > 0 and len(real) == 0:
            raise ValueError("the real dataset is empty")
        if synthetic is not None:
            if synthetic.obs_dim != real.obs_dim:
                raise ValueError(f"synthetic observations have dim {synthetic.obs_dim}, real have "
                                 f"{real.obs_dim}")
            if synthetic.act_dim != real.act_dim:
                raise ValueError(f"synthetic actions have dim {synthetic.act_dim}, real have "
                                 f"{real.act_dim}")
            if synthetic.device != real.device:
                raise ValueError(f"synthetic data is on {synthetic.device}, real data on "
                                 f"{real.device}")
        if generator.device.type != real.device.type:
            raise ValueError(f"generator is on {generator.device} but the data is on "
                             f"{real.device}: use torch.Generator(device={str(real.device)!r})")

        self.batch_size = batch_size
        self.synthetic_ratio = float(synthetic_ratio)
        self.n_synthetic = n_syn                    # synthetic rows per batch
        self.n_real = batch_size - n_syn            # real rows per batch
        self.generator = generator
        self._real_size = len(real)
        self._syn_size = len(synthetic) if n_syn > 0 else 0
        # Rows [0, real_size) are real, [real_size, real_size + syn_size) synthetic.
        self.data = concat([real, synthetic]) if n_syn > 0 else real

    @staticmethod
    def real_rows(batch_size: int, synthetic_ratio: float) -> int:
        """Real rows per batch; they come first in every batch, the synthetic rows after."""
        return batch_size - int(round(batch_size * synthetic_ratio))

    def sample(self) -> Transitions:
        dev = self.data.device
        parts = []
        if self.n_real:
            parts.append(torch.randint(self._real_size, (self.n_real,), generator=self.generator,
                                       device=dev))                                 # [n_real]
        if self.n_synthetic:
            parts.append(torch.randint(self._syn_size, (self.n_synthetic,),
                                       generator=self.generator, device=dev)
                         + self._real_size)                                          # [n_syn]
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)                      # [batch]
        return self.data.index(idx)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class EagerUpdates:
    """What the RL training loop (`rl.loop`) calls on an agent: one eager update per call. The
    fast agents override it to run a whole update cadence as one CUDA graph."""

    path_description = "reference (eager PyTorch)"
    updates_per_call = 1          # updates one update_from call does at most

    def update_from(self, sampler: MixedSampler) -> tuple[dict, int]:
        """Update on the sampler's next batch; return the logged values and the updates done."""
        return self.update(sampler.sample()), 1
