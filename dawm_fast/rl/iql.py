"""IQL (Kostrikov et al., 2022, "Offline Reinforcement Learning with Implicit Q-Learning").

Layout follows CORL's ``iql.py``: hyperparameters in one dataclass, and one ``update`` that calls
``_update_v`` (expectile regression of V onto the target Q), ``_update_q`` (one-step TD onto V(s'))
and ``_update_policy`` (advantage-weighted regression) in the paper's order. Batches carry
observations normalized by the real dataset's statistics and, when ``normalize_reward``, rewards
multiplied by ``buffer.iql_reward_scale`` of the real dataset (the training loop applies both to
real AND synthetic data). IQL never queries actions outside the data, so its update draws no
random numbers: a resumed run is bit-exact from the networks, optimizers and the LR schedule.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR

from dawm_fast.data.tasks import parse_task
from dawm_fast.rl.buffer import EagerUpdates, Transitions
from dawm_fast.rl.networks import (DeterministicActor, GaussianActor, ObsNormalizer, TwinCritic,
                                   ValueNet, soft_update)


@dataclass
class IQLConfig:
    actor_lr: float = 3e-4          # Adam LR of the policy (cosine-decayed over total_steps)
    q_lr: float = 3e-4              # Adam LR of both Q heads
    v_lr: float = 3e-4              # Adam LR of V
    tau: float = 0.005              # target-Q Polyak rate (IQL has no target V or actor)
    expectile: float = 0.7          # tau of the expectile loss; 0.5 = mean, ->1 = max over data
    beta: float = 3.0               # inverse temperature: small -> BC, large -> greedy on Q
    max_exp_adv: float = 100.0      # clip of the AWR weight exp(beta * A)
    hidden: int = 256               # width of the two hidden layers of every MLP
    batch_size: int = 256           # CORL / paper
    max_action: float = 1.0         # action bound (MuJoCo locomotion: 1)
    deterministic_actor: bool = False   # CORL iql_deterministic: False = Gaussian policy
    normalize_reward: bool = True   # IQL paper locomotion recipe; the training loop applies it


# CORL's per-dataset settings that differ from the defaults above.
_TASK_OVERRIDES: dict[str, dict] = {
    "hopper-medium-expert": {"beta": 6.0, "expectile": 0.5},
}


def iql_config_for(task_name: str, **overrides) -> IQLConfig:
    """IQLConfig for a dataset such as ``hopper-medium-expert`` (unknown names raise)."""
    family, kind = parse_task(task_name)
    fields = dict(_TASK_OVERRIDES.get(f"{family.name}-{kind}", {}))
    fields.update(overrides)
    return IQLConfig(**fields)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |expectile - 1(diff < 0)| * diff^2 with diff = Q - V: V is pushed up more by
    positive errors, so it tracks the ``expectile`` of Q over the data's actions."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def awr_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """exp(beta * A), clipped at ``max_weight`` so a few large advantages cannot dominate."""
    return torch.exp(beta * adv).clamp(max=max_weight)


class IQL(EagerUpdates):
    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig | None = None,
                 device: str | torch.device = "cpu", obs_mean=None, obs_std=None, *,
                 seed: int = 0, gamma: float = 0.99, total_steps: int = 1_000_000):
        self.cfg = cfg = cfg or IQLConfig()
        self.seed = seed                # network init
        self.gamma = gamma              # discount
        self.total_steps = total_steps  # training length: horizon of the actor LR cosine decay
        self.device = torch.device(device)
        # Build on CPU under a forked RNG: init depends on the seed only, caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor_cls = DeterministicActor if cfg.deterministic_actor else GaussianActor
            actor = actor_cls(obs_dim, act_dim, cfg.hidden, cfg.max_action)
            qf = TwinCritic(obs_dim, act_dim, cfg.hidden)
            vf = ValueNet(obs_dim, cfg.hidden)
        self.actor = actor.to(self.device)
        self.qf = qf.to(self.device)
        self.vf = vf.to(self.device)
        self.q_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.q_optimizer = torch.optim.Adam(self.qf.parameters(), lr=cfg.q_lr)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=cfg.v_lr)
        self.actor_lr_schedule = CosineAnnealingLR(self.actor_optimizer, total_steps)
        self.obs_norm = ObsNormalizer(obs_dim).to(self.device)
        if obs_mean is not None or obs_std is not None:
            self.set_obs_stats(obs_mean, obs_std)
        self.total_it = 0

    def set_obs_stats(self, mean, std) -> None:
        self.obs_norm.set(mean, std)

    def _update_v(self, obs: torch.Tensor, act: torch.Tensor, log: dict) -> torch.Tensor:
        """Expectile regression of V(s) onto min_i Q_target_i(s, a); returns the advantage [B]."""
        with torch.no_grad():
            target_q = torch.min(*self.q_target(obs, act))                        # [B]
        v = self.vf(obs)                                                          # [B]
        adv = target_q - v
        v_loss = expectile_loss(adv, self.cfg.expectile)
        self.v_optimizer.zero_grad(set_to_none=True)
        v_loss.backward()
        self.v_optimizer.step()
        log["v_loss"] = v_loss.detach()
        log["v_mean"] = v.detach().mean()
        return adv.detach()

    def _update_q(self, next_v: torch.Tensor, obs: torch.Tensor, act: torch.Tensor,
                  rew: torch.Tensor, terminals: torch.Tensor, log: dict) -> None:
        """One-step TD of both Q heads onto r + gamma * V(s'); then Polyak the target Q."""
        target = rew + (1.0 - terminals) * self.gamma * next_v                     # [B]
        q1, q2 = self.qf(obs, act)
        q_loss = (F.mse_loss(q1, target) + F.mse_loss(q2, target)) / 2
        self.q_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_optimizer.step()
        soft_update(self.q_target, self.qf, self.cfg.tau)
        log["q_loss"] = q_loss.detach()
        log["q_mean"] = q1.detach().mean()

    def _update_policy(self, adv: torch.Tensor, obs: torch.Tensor, act: torch.Tensor,
                       log: dict) -> None:
        """Advantage-weighted regression: maximize exp(beta * A) * log pi(a|s) on data actions."""
        weights = awr_weights(adv, self.cfg.beta, self.cfg.max_exp_adv)           # [B]
        if self.cfg.deterministic_actor:
            bc_losses = (self.actor(obs) - act).square().sum(-1)                  # [B]
        else:
            bc_losses = -self.actor(obs).log_prob(act).sum(-1)                    # [B]
        actor_loss = (weights * bc_losses).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        log["actor_loss"] = actor_loss.detach()
        log["adv_weight_mean"] = weights.mean()

    def update(self, batch: Transitions) -> dict[str, torch.Tensor]:
        """One IQL step. Returns detached 0-dim tensors (no device sync here; call float() when
        logging): v_loss, v_mean, q_loss, q_mean, actor_loss, adv_weight_mean."""
        self.total_it += 1
        log = self._update_networks(batch)
        self.actor_lr_schedule.step()
        return log

    def _update_networks(self, batch: Transitions) -> dict[str, torch.Tensor]:
        """V, then Q (+ target), then the policy: everything of one update but the LR schedule
        (host arithmetic, which the fast path keeps out of its CUDA graph)."""
        log: dict = {}
        with torch.no_grad():
            next_v = self.vf(batch.next_observations)          # [B], V before this step's update
        adv = self._update_v(batch.observations, batch.actions, log)
        self._update_q(next_v, batch.observations, batch.actions, batch.rewards,
                       batch.terminals, log)
        self._update_policy(adv, batch.observations, batch.actions, log)
        return log

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions (the Gaussian's mean) for raw observations [N, obs] -> [N, act]."""
        x = self.obs_norm(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device))
        if self.cfg.deterministic_actor:
            a = self.actor(x)
        else:
            a = self.actor.mean_action(x)
        return a.clamp(-self.cfg.max_action, self.cfg.max_action).cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "actor": self.actor.state_dict(),
            "qf": self.qf.state_dict(),
            "q_target": self.q_target.state_dict(),
            "vf": self.vf.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "v_optimizer": self.v_optimizer.state_dict(),
            "actor_lr_schedule": self.actor_lr_schedule.state_dict(),
            "obs_norm": self.obs_norm.state_dict(),
            "total_it": self.total_it,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.qf.load_state_dict(state["qf"])
        self.q_target.load_state_dict(state["q_target"])
        self.vf.load_state_dict(state["vf"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.v_optimizer.load_state_dict(state["v_optimizer"])
        self.actor_lr_schedule.load_state_dict(state["actor_lr_schedule"])
        self.obs_norm.load_state_dict(state["obs_norm"])
        self.total_it = int(state["total_it"])
