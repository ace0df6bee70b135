"""Inverse dynamics model: a_i = IDM(s_i, s_{i+1}) on normalized states, tanh-bounded actions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dawm_fast.rl.networks import mlp


@dataclass(frozen=True)
class InverseDynamicsConfig:
    hidden: int = 256                   # hidden width
    n_hidden: int = 2                   # hidden layers (ReLU)
    dropout: float = 0.0                # dropout after each hidden layer
    lr: float = 3e-4                    # Adam learning rate
    batch_size: int = 256               # minibatch size
    n_steps: int = 20_000               # gradient steps
    holdout_frac: float = 0.05          # share of transitions held out for the reported MSE


class InverseDynamics(nn.Module):
    """MLP on concat(s_i, s_{i+1}) -> tanh -> a_i in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int,
                 cfg: InverseDynamicsConfig = InverseDynamicsConfig()):
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.net = mlp(2 * obs_dim, act_dim, cfg.hidden, cfg.n_hidden, cfg.dropout)

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        # obs, next_obs: [N, obs_dim] -> [N, act_dim]
        return torch.tanh(self.net(torch.cat([obs, next_obs], dim=-1)))


@dataclass
class InverseDynamicsReport:
    heldout_mse: float                  # action MSE on the held-out split (per action element)
    train_mse: float                    # action MSE on the training split
    heldout_action_var: float           # per-element variance of held-out actions (MSE baseline)
    n_train: int
    n_heldout: int


@torch.no_grad()
def _mse(model: InverseDynamics, obs: torch.Tensor, nxt: torch.Tensor, act: torch.Tensor,
         chunk: int = 65536) -> float:
    total = 0.0
    for i in range(0, obs.shape[0], chunk):
        pred = model(obs[i:i + chunk], nxt[i:i + chunk])
        total += float(((pred - act[i:i + chunk]) ** 2).sum())
    return total / max(act.numel(), 1)


def train_inverse_dynamics(obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray,
                           cfg: InverseDynamicsConfig = InverseDynamicsConfig(),
                           device: str | torch.device = "cpu", *, seed: int = 0,
                           ) -> tuple[InverseDynamics, InverseDynamicsReport]:
    """Fit an IDM on normalized (obs [N, obs_dim], next_obs [N, obs_dim], actions [N, act_dim]).

    ``seed`` seeds the hold-out split, the init and the minibatch draws. A seeded
    ``holdout_frac`` share is kept out of training; the report gives its action MSE.
    The returned model is in eval mode.
    """
    n = obs.shape[0]
    if not (next_obs.shape == obs.shape and actions.shape[0] == n):
        raise ValueError(f"shape mismatch: obs {obs.shape}, next_obs {next_obs.shape}, "
                         f"actions {actions.shape}")
    n_hold = int(round(cfg.holdout_frac * n))
    if n - n_hold < 1:
        raise ValueError(f"need at least one training transition, got {n} with "
                         f"holdout_frac={cfg.holdout_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]

    def t(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32)[idx], device=device)

    tr = [t(a, train_idx) for a in (obs, next_obs, actions)]
    ho = [t(a, hold_idx) for a in (obs, next_obs, actions)]

    with torch.random.fork_rng(devices=[]):   # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = InverseDynamics(obs.shape[1], actions.shape[1], cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    n_train = tr[0].shape[0]
    model.train()
    for _ in range(cfg.n_steps):
        idx = torch.randint(0, n_train, (min(cfg.batch_size, n_train),), device=device,
                            generator=gen)
        loss = ((model(tr[0][idx], tr[1][idx]) - tr[2][idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    report = InverseDynamicsReport(
        heldout_mse=_mse(model, *ho) if n_hold else float("nan"),
        train_mse=_mse(model, *tr),
        heldout_action_var=float(ho[2].var(dim=0, unbiased=False).mean()) if n_hold
        else float("nan"),
        n_train=n_train, n_heldout=n_hold)
    return model, report
