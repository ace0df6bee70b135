"""TD3+BC (Fujimoto & Gu, 2021, "A Minimalist Approach to Offline Reinforcement Learning").

Layout follows CORL's ``td3_bc.py``: hyperparameters in one dataclass, then one ``update`` that
reads top to bottom like Algorithm 1 of the paper. Batches are ``Transitions`` with observations
already normalized by the real dataset's statistics (``buffer.compute_obs_stats``); the agent keeps
those statistics so ``act`` takes raw env observations.

``state_dict`` holds everything a resumed run needs to continue bit-exactly: online and target
networks, optimizers, the update counter (it decides which steps update the actor) and the
generator of the target-policy noise.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dawm_fast.rl.buffer import EagerUpdates, Transitions
from dawm_fast.rl.networks import DeterministicActor, ObsNormalizer, TwinCritic, soft_update


@dataclass
class TD3BCConfig:
    actor_lr: float = 3e-4      # Adam learning rate of the actor
    critic_lr: float = 3e-4     # Adam learning rate of both Q heads
    tau: float = 0.005          # target-network Polyak rate
    policy_noise: float = 0.2   # std of target-policy smoothing noise, fraction of max_action
    noise_clip: float = 0.5     # clip of that noise, fraction of max_action
    policy_freq: int = 2        # actor + target update once every `policy_freq` critic updates
    alpha: float | None = 2.5   # BC trade-off: lambda = alpha / mean|Q|; None = plain TD3
                                # (actor maximizes Q, no BC term: the online behaviour trainer)
    hidden: int = 256           # width of the two hidden layers of every MLP
    batch_size: int = 256       # CORL / paper; DWM trained its offline agents with 128
    max_action: float = 1.0     # action bound (MuJoCo locomotion: 1)
    # BC term over the first `bc_rows` rows of each batch only (MixedSampler puts the real rows
    # first, so this is "imitate the dataset's actions, not the IDM's"); None = every row.
    bc_rows: int | None = None


def td3bc_actor_loss(pi: torch.Tensor, q: torch.Tensor, actions: torch.Tensor,
                     alpha: float | None,
                     bc_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-lambda * mean Q(s, pi(s)) + mean (pi(s) - a)^2, lambda = alpha / mean|Q| (no gradient
    through lambda: it only rescales Q so that alpha means the same on every task).
    alpha None: TD3's own actor loss -mean Q (lambda reported as 1). bc_rows: the BC mean runs
    over the first bc_rows rows only (the Q term over all).

    pi, actions: [B, act]; q: [B]. Returns (loss, lambda).
    """
    if alpha is None:
        return -q.mean(), torch.ones((), device=q.device)
    lmbda = alpha / q.abs().mean().detach()
    return -lmbda * q.mean() + F.mse_loss(pi[:bc_rows], actions[:bc_rows]), lmbda


class TD3BC(EagerUpdates):
    def __init__(self, obs_dim: int, act_dim: int, cfg: TD3BCConfig | None = None,
                 device: str | torch.device = "cpu", obs_mean=None, obs_std=None, *,
                 seed: int = 0, gamma: float = 0.99):
        self.cfg = cfg = cfg or TD3BCConfig()
        self.seed = seed            # network init and target-noise generator
        self.gamma = gamma          # discount
        self.device = torch.device(device)
        # Build on CPU under a forked RNG: the init depends on the seed only (not on the global
        # RNG or the device), and building leaves the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor = DeterministicActor(obs_dim, act_dim, cfg.hidden, cfg.max_action)
            critic = TwinCritic(obs_dim, act_dim, cfg.hidden)
        self.actor = actor.to(self.device)
        self.critic = critic.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.obs_norm = ObsNormalizer(obs_dim).to(self.device)
        if obs_mean is not None or obs_std is not None:
            self.set_obs_stats(obs_mean, obs_std)
        # Own generator for the smoothing noise: resuming restores it, and nothing else that
        # draws from the global RNG can shift the noise sequence.
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(seed)
        self.total_it = 0

    def set_obs_stats(self, mean, std) -> None:
        self.obs_norm.set(mean, std)

    def update(self, batch: Transitions) -> dict[str, torch.Tensor]:
        """One TD3+BC step. Returns detached 0-dim tensors (no device sync here; call float()
        when logging): critic_loss, q_mean every step; actor_loss, bc_mse, lambda on actor steps.
        """
        cfg = self.cfg
        self.total_it += 1
        obs, act, rew = batch.observations, batch.actions, batch.rewards
        next_obs, not_done = batch.next_observations, 1.0 - batch.terminals

        # Critic: clipped double-Q target with target-policy smoothing.
        with torch.no_grad():
            noise = torch.randn(act.shape, generator=self.noise_generator, device=act.device)
            noise = (noise * cfg.policy_noise * cfg.max_action).clamp(
                -cfg.noise_clip * cfg.max_action, cfg.noise_clip * cfg.max_action)  # [B, act]
            next_act = (self.actor_target(next_obs) + noise).clamp(-cfg.max_action,
                                                                   cfg.max_action)
            target_q1, target_q2 = self.critic_target(next_obs, next_act)         # [B], [B]
            target_q = rew + not_done * self.gamma * torch.min(target_q1, target_q2)
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        log = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean()}

        # Delayed actor and target updates.
        if self.total_it % cfg.policy_freq == 0:
            pi = self.actor(obs)                                                  # [B, act]
            q = self.critic.q1(torch.cat([obs, pi], dim=-1)).squeeze(-1)          # [B]
            actor_loss, lmbda = td3bc_actor_loss(pi, q, act, cfg.alpha, cfg.bc_rows)
            self.actor_optimizer.zero_grad(set_to_none=True)
            # inputs=: gradients for the actor only; the critic's would be wasted work.
            actor_loss.backward(inputs=list(self.actor.parameters()))
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            log.update({"actor_loss": actor_loss.detach(), "lambda": lmbda,
                        "bc_mse": F.mse_loss(pi.detach()[:cfg.bc_rows], act[:cfg.bc_rows])})
        return log

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions for raw (unnormalized) observations [N, obs] -> [N, act]."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        return self.actor(self.obs_norm(x)).cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "actor": self.actor.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "obs_norm": self.obs_norm.state_dict(),
            "total_it": self.total_it,
            "noise_generator": self.noise_generator.get_state(),
            "noise_generator_device": self.device.type,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.obs_norm.load_state_dict(state["obs_norm"])
        self.total_it = int(state["total_it"])
        if state["noise_generator_device"] == self.device.type:
            self.noise_generator.set_state(state["noise_generator"])
        else:
            # CPU and CUDA generator states are different formats; a cross-device resume cannot
            # be bit-exact anyway, so continue with a fresh stream that still depends on the step.
            self.noise_generator.manual_seed(self.seed + self.total_it)
