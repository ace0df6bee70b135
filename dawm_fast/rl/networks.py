"""MLPs shared by the online behaviour trainer and the offline RL algorithms (CORL layout)."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden: int = 256, n_hidden: int = 2,
        dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """s -> tanh(MLP(s)) * max_action (TD3, TD3+BC; also IQL's deterministic policy)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, max_action: float = 1.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.max_action


class TwinCritic(nn.Module):
    """Two independent Q(s, a) heads, evaluated together."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = torch.cat([obs, act], dim=-1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)


def actor_to_numpy(actor: DeterministicActor) -> dict:
    """Export a DeterministicActor as plain arrays (read by dawm_fast.data.numpy_policy)."""
    linears = [m for m in actor.net if isinstance(m, nn.Linear)]
    out = {}
    for i, lin in enumerate(linears):
        out[f"W{i}"] = lin.weight.detach().cpu().numpy().T.copy()   # [in, out]
        out[f"b{i}"] = lin.bias.detach().cpu().numpy().copy()
    out["max_action"] = float(actor.max_action)
    return out


class GaussianActor(nn.Module):
    """IQL's default policy (CORL ``GaussianPolicy``): N(tanh(MLP(s)) * max_action, exp(log_std)).

    The log-std is one state-independent vector: IQL only needs log pi(a|s) for its weighted
    regression, and evaluation uses the mean, so a state-dependent std buys nothing here.
    """

    LOG_STD_MIN = -20.0
    LOG_STD_MAX = 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, max_action: float = 1.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = torch.tanh(self.net(obs)) * self.max_action                   # [B, act]
        std = self.log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX).exp()    # [act]
        # No argument validation: it syncs with the host (an .all() per call), which a CUDA graph
        # cannot capture; a NaN shows up in the training loop's loss check instead.
        return torch.distributions.Normal(mean, std, validate_args=False)

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic evaluation action (the distribution's mean)."""
        return torch.tanh(self.net(obs)) * self.max_action


class ValueNet(nn.Module):
    """State value V(s) (IQL's expectile value function); returns [B]."""

    def __init__(self, obs_dim: int, hidden: int = 256):
        super().__init__()
        self.v = mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(obs).squeeze(-1)


class ObsNormalizer(nn.Module):
    """(s - mean) / std with the real dataset's statistics, kept with the agent (as buffers, so
    they are in its state_dict) because the evaluation policy sees raw env observations."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set(self, mean, std) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target <- (1 - tau) * target + tau * source, one fused lerp per list."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
