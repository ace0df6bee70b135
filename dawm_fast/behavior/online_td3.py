"""Online TD3 (Fujimoto et al., 2018) or SAC (Haarnoja et al., 2018; ``--algo sac``) on Gymnasium
MuJoCo v5: trains the behaviour policies from which the embedded D4RL-recipe datasets are
generated. D4RL's own behaviour policies were SAC; both are here because on one CPU core either
may plateau first (MACHINE-NOTES: SAC reached walker2d 3,937 at 300k steps, TD3 4,008 at 450k).

Resumable: ``state.pt`` (networks, optimizers, counters, RNG states) and ``buffer.npy`` are written
atomically every ``checkpoint_every`` steps; re-running with the same ``--workdir`` continues. If
the buffer file is gone (a fresh clone holds only the small ``state.pt``), the run rebuilds it by
rolling out its own snapshots in order, each from the step it was taken (about a minute per 350k
steps), and updates go on at once.

Every ``snapshot_every`` steps the actor is saved (``snapshots/actor_XXXXXXX.npz``) and evaluated;
``dawm_fast.behavior.export`` later picks the medium and expert policies from these snapshots and
keeps the ones before the medium policy to rebuild a medium-replay buffer.

    python -m dawm_fast.behavior.online_td3 --env hopper --workdir behavior_runs/hopper

A workdir is not committed (``behavior_runs/`` is git-ignored); the project's own runs were last
committed in 61039f3 (docs/data.md, "Behaviour policies"), from where a restored workdir resumes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dawm_fast.behavior.run_files import (append_eval_log, atomic_np_save, parse_config,
                                          list_snapshots, reached_target, save_snapshot)
from dawm_fast.data.embedded import replay_episodes
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.data.tasks import env_family
from dawm_fast.evaluation.rollout import evaluate_policy
from dawm_fast.rl.networks import DeterministicActor, TwinCritic, actor_to_numpy, mlp
from dawm_fast.run_io import atomic_torch_save


class SquashedGaussianActor(nn.Module):
    """SAC's policy: a ~ tanh(N(mu(s), exp(log_std(s)))) * max_action. ``forward`` is the
    deterministic tanh(mu) action (evaluation, snapshots); ``sample`` draws with log-probability."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, max_action: float = 1.0):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden)
        self.act_dim = act_dim
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)[..., :self.act_dim]) * self.max_action

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).split(self.act_dim, dim=-1)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        # log N(u) - sum log(1 - tanh(u)^2), the latter in the stable softplus form
        logp = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u) * self.max_action, logp

    def to_numpy(self) -> dict:
        """The deterministic policy in DeterministicActor's numpy layout (mu rows only)."""
        out = actor_to_numpy(self)
        last = max(int(k[1:]) for k in out if k.startswith("W"))
        out[f"W{last}"] = out[f"W{last}"][:, :self.act_dim].copy()
        out[f"b{last}"] = out[f"b{last}"][:self.act_dim].copy()
        return out


@dataclass
class OnlineTD3Config:
    env: str = "walker2d"            # env family: walker2d | hopper | halfcheetah
    algo: str = "td3"                # td3 | sac (sac: auto-tuned entropy, no exploration noise)
    total_steps: int = 1_000_000     # env steps at most
    start_steps: int = 25_000        # uniform-random actions before learning starts
    batch_size: int = 256
    hidden: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    expl_noise: float = 0.1          # Gaussian exploration noise (fraction of max action)
    policy_noise: float = 0.2        # target policy smoothing noise
    noise_clip: float = 0.5
    policy_freq: int = 2             # actor / target update every `policy_freq` critic updates
    snapshot_every: int = 10_000     # actor snapshot + evaluation period (env steps)
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    target_return: float | None = None   # stop once a 10-episode evaluation reaches this
    target_noisy_return: float | None = None  # ... and 10 episodes with the datasets' noise this
    seed: int = 0
    threads: int = 1


def evaluate_actor(actor: DeterministicActor, gym_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of the live (float32) actor, deterministic, episode i reset with seed + i."""
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    return evaluate_policy(act, gym_id, episodes, seed).returns


class OnlineTD3:
    def __init__(self, cfg: OnlineTD3Config, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        fam = env_family(cfg.env)
        self.gym_id = fam.gym_id_v5
        self.obs_dim, self.act_dim = fam.obs_dim, fam.act_dim
        if cfg.algo not in ("td3", "sac"):
            raise SystemExit(f"--algo must be td3 or sac, got {cfg.algo!r}")
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.sac = cfg.algo == "sac"
        actor_cls = SquashedGaussianActor if self.sac else DeterministicActor
        self.actor = actor_cls(self.obs_dim, self.act_dim, cfg.hidden)
        self.critic = TwinCritic(self.obs_dim, self.act_dim, cfg.hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        # SAC's temperature, tuned towards an entropy of -act_dim.
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        # buffer rows: obs | act | reward | next_obs | terminal
        self.width = 2 * self.obs_dim + self.act_dim + 2
        self.buffer = np.zeros((cfg.total_steps, self.width), np.float32)
        self.size = 0
        self.step = 0
        self.updates = 0
        self.refill_until = 0  # after a resume without buffer: explore only until this step

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(), "alpha_opt": self.alpha_opt.state_dict(),
            "size": self.size, "step": self.step, "updates": self.updates,
            "torch_rng": torch.get_rng_state(), "np_rng": self.rng.bit_generator.state,
        }

    def save(self) -> None:
        atomic_np_save(self.buffer[: self.size], self.workdir / "buffer.npy")
        atomic_torch_save(self.state_dict(), self.workdir / "state.pt")

    def try_resume(self) -> bool:
        path = self.workdir / "state.pt"
        if not path.exists():
            return False
        sd = torch.load(path, weights_only=False)
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_opt",
                     "critic_opt"):
            getattr(self, name).load_state_dict(sd[name])
        if "log_alpha" in sd:
            with torch.no_grad():
                self.log_alpha.copy_(sd["log_alpha"])
            self.alpha_opt.load_state_dict(sd["alpha_opt"])
        self.step, self.updates = sd["step"], sd["updates"]
        torch.set_rng_state(sd["torch_rng"])
        self.rng.bit_generator.state = sd["np_rng"]
        buf_path = self.workdir / "buffer.npy"
        if buf_path.exists():
            buf = np.load(buf_path)
            self.size = len(buf)
            self.buffer[: self.size] = buf
        elif not self.rebuild_buffer():
            self.size = 0
            self.refill_until = self.step + self.cfg.start_steps
            print(f"[{self.cfg.algo}] buffer.npy missing: refilling {self.cfg.start_steps} steps "
                  f"with the current policy before updates resume")
        return True

    def rebuild_buffer(self) -> bool:
        """After a resume without ``buffer.npy``: replay the run's own history into the buffer,
        rolling out each kept snapshot from the step it was taken for ``snapshot_every`` steps with
        exploration noise (uniform random before ``start_steps``), as export rebuilds
        medium-replay. A buffer of only the current policy's data (the fallback) is narrow: seen,
        a walker2d SAC run fell from 3,528 to 581 after such a refill."""
        snaps = [(s, NumpyPolicy.load(p)) for s, p in list_snapshots(self.workdir)
                 if s <= self.step]
        if not snaps:
            return False
        family = env_family(self.cfg.env)
        print(f"[{self.cfg.algo}] buffer.npy missing: rebuilding {self.step:,} steps from "
              f"{len(snaps)} snapshots", flush=True)
        t0 = time.time()
        episodes = replay_episodes(family, snaps, self.step, self.cfg.start_steps,
                                   self.cfg.expl_noise, seed=self.cfg.seed + self.step,
                                   progress=lambda n: None)
        o, d = self.obs_dim, self.act_dim
        self.size = 0
        for ep in episodes:
            obs = np.asarray(ep["observations"], np.float32)
            n = len(ep["actions"])
            rows = self.buffer[self.size:self.size + n]
            rows[:, :o], rows[:, o:o + d] = obs[:-1], np.asarray(ep["actions"], np.float32)
            rows[:, o + d] = np.asarray(ep["rewards"], np.float32)
            rows[:, o + d + 1:2 * o + d + 1] = obs[1:]
            rows[:, -1] = np.asarray(ep["terminations"], np.float32)
            self.size += n
        print(f"[{self.cfg.algo}] rebuilt {self.size:,} transitions in {time.time() - t0:.0f} s",
              flush=True)
        return True

    # -- learning ------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.cfg.start_steps:
            return self.rng.uniform(-1, 1, self.act_dim).astype(np.float32)
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32)[None]
            if self.sac:
                return self.actor.sample(x)[0][0].numpy().astype(np.float32)
            a = self.actor(x)[0].numpy()
        a = a + self.rng.normal(0, self.cfg.expl_noise, self.act_dim)
        return np.clip(a, -1, 1).astype(np.float32)

    def update(self) -> None:
        cfg = self.cfg
        idx = self.rng.integers(0, self.size, cfg.batch_size)
        b = torch.as_tensor(self.buffer[idx])
        o, d = self.obs_dim, self.act_dim
        obs, act, rew = b[:, :o], b[:, o:o + d], b[:, o + d]
        next_obs, term = b[:, o + d + 1:2 * o + d + 1], b[:, -1]
        if self.sac:
            self._update_sac(obs, act, rew, next_obs, term)
            return
        with torch.no_grad():
            noise = (torch.randn_like(act) * cfg.policy_noise).clamp(-cfg.noise_clip,
                                                                     cfg.noise_clip)
            next_act = (self.actor_target(next_obs) + noise).clamp(-1, 1)
            tq1, tq2 = self.critic_target(next_obs, next_act)
            target = rew + cfg.gamma * (1 - term) * torch.min(tq1, tq2)
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.updates += 1
        if self.updates % cfg.policy_freq == 0:
            actor_loss = -self.critic.q1(torch.cat([obs, self.actor(obs)], -1)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            with torch.no_grad():
                for net, tgt in ((self.actor, self.actor_target),
                                 (self.critic, self.critic_target)):
                    for p, tp in zip(net.parameters(), tgt.parameters()):
                        tp.lerp_(p, cfg.tau)

    def _update_sac(self, obs, act, rew, next_obs, term) -> None:
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs)
            tq = torch.min(*self.critic_target(next_obs, next_act)) - alpha * next_logp
            target = rew + cfg.gamma * (1 - term) * tq
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        pi, logp = self.actor.sample(obs)
        actor_loss = (alpha * logp - torch.min(*self.critic(obs, pi))).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(self.actor.parameters()))
        self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.act_dim * -1.0)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, cfg.tau)
        self.updates += 1

    def snapshot(self) -> float:
        self.last_snapshot = save_snapshot(self.workdir, self.step, self.actor.to_numpy()
                                           if self.sac else actor_to_numpy(self.actor))
        rets = evaluate_actor(self.actor, self.gym_id, self.cfg.eval_episodes,
                              seed=10_000 + self.step)
        append_eval_log(self.workdir, self.step, rets, time.time() - self.t0)
        return float(rets.mean())

    def train(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        resumed = self.try_resume()
        (self.workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        print(f"[{cfg.algo}] env {self.gym_id} seed {cfg.seed} {'resumed at step ' + str(self.step) if resumed else 'fresh'}",
              flush=True)
        env = gym.make(self.gym_id)
        obs, _ = env.reset(seed=cfg.seed + self.step)
        self.t0 = time.time()
        t_rate, s_rate = time.time(), self.step
        ep_ret, ep_len = 0.0, 0
        while self.step < cfg.total_steps:
            act = self.act(obs)
            next_obs, r, term, trunc, _ = env.step(act)
            row = self.buffer[self.size]
            o, d = self.obs_dim, self.act_dim
            row[:o], row[o:o + d], row[o + d] = obs, act, r
            row[o + d + 1:2 * o + d + 1], row[-1] = next_obs, float(term)
            self.size += 1
            self.step += 1
            ep_ret += float(r)
            ep_len += 1
            obs = next_obs
            if term or trunc:
                obs, _ = env.reset()
                ep_ret, ep_len = 0.0, 0
            if self.step >= cfg.start_steps and self.step >= self.refill_until:
                self.update()
            if self.step % cfg.snapshot_every == 0:
                mean_ret = self.snapshot()
                rate = (self.step - s_rate) / (time.time() - t_rate)
                eta = (cfg.total_steps - self.step) / max(rate, 1e-9) / 60
                print(f"[{cfg.algo}] step {self.step:>7d}  eval return {mean_ret:8.1f}  "
                      f"{rate:6.0f} steps/s  ETA {eta:5.1f} min (at most)", flush=True)
                t_rate, s_rate = time.time(), self.step
                if (cfg.target_return is not None and mean_ret >= cfg.target_return
                        and reached_target(self.last_snapshot, self.gym_id, self.step,
                                           cfg.target_return, cfg.target_noisy_return,
                                           cfg.algo)):
                    self.save()
                    break
            if self.step % cfg.checkpoint_every == 0:
                self.save()
        self.save()
        env.close()


def main(argv=None) -> None:
    cfg, workdir = parse_config(OnlineTD3Config, argv, __doc__)
    OnlineTD3(cfg, workdir).train()


if __name__ == "__main__":
    main()
