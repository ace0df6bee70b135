"""Online TD3 with vectorized environments and the fast TD3 update: the behaviour trainer for a
machine with a GPU and many cores (on one CPU core ``online_td3`` is the one to use).

Same algorithm and hyperparameters as ``online_td3`` (TD3 = ``TD3BC`` with ``alpha=None``: no BC
term), and the same outputs in the workdir (``config.json``, ``log.csv``,
``snapshots/actor_XXXXXXX.npz``, ``state.pt``; ``buffer.npy`` beside them, ignored by git), so
``dawm_fast.behavior.export`` picks the expert, medium and replay policies from it unchanged.

    python -m dawm_fast.behavior.vector_td3 --env walker2d --workdir behavior_runs/walker2d_vec \
        --n-envs 16 --device cuda --target-return 4300

What is different: ``n_envs`` environments step together (one process each), the replay buffer
lives on the device and batches are drawn there, and each update runs on the fast path
(``FastTD3BC``: one CUDA graph per critic/critic+actor cadence on a GPU). The update-to-data
ratio stays 1: every vector step of ``n_envs`` transitions is followed by ``n_envs`` updates.
Snapshots are evaluated with the float16 weights as stored (numpy, on the CPU), exactly as the
export evaluates them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dawm_fast.behavior.export import evaluate
from dawm_fast.behavior.run_files import (append_eval_log, atomic_np_save, parse_config,
                                          reached_target, save_snapshot)
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.data.tasks import env_family
from dawm_fast.rl.buffer import Transitions
from dawm_fast.rl.fast_updates import FastTD3BC
from dawm_fast.rl.networks import actor_to_numpy
from dawm_fast.rl.td3bc import TD3BCConfig
from dawm_fast.run_io import atomic_torch_save


@dataclass
class VectorTD3Config:
    env: str = "walker2d"            # env family: walker2d | hopper | halfcheetah
    total_steps: int = 1_000_000     # env steps at most (all environments together)
    start_steps: int = 25_000        # uniform-random actions before learning starts
    n_envs: int = 8                  # environments stepped together (one process each)
    batch_size: int = 256
    hidden: int = 256
    lr: float = 3e-4
    expl_noise: float = 0.1          # Gaussian exploration noise (fraction of max action)
    snapshot_every: int = 10_000     # actor snapshot + evaluation period (env steps)
    eval_episodes: int = 5
    target_return: float | None = None   # stop once a 10-episode evaluation reaches this
    target_noisy_return: float | None = None  # ... and 10 episodes with the datasets' noise this
    seed: int = 0
    device: str = "cuda"
    async_envs: bool = True          # one process per environment (False: in this process)


class DeviceReplay:
    """The replay buffer as one device tensor, rows [obs | act | reward | next_obs | terminal].

    ``sample()`` draws ``batch_size`` indices on the device from ``generator``; the current size is
    a device scalar, so the draw needs no host value and is captured inside the update's graph.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, batch_size: int,
                 device: torch.device, generator: torch.Generator):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        self.data = torch.zeros(capacity, self.width, device=device)
        self.n = 0
        self.size = torch.zeros((), device=device)        # float: scales the uniform draw
        self.batch_size = batch_size
        self.generator = generator

    def add(self, rows: np.ndarray) -> None:
        k = len(rows)
        if self.n + k > len(self.data):
            raise ValueError(f"replay buffer full ({len(self.data)} rows)")
        self.data[self.n:self.n + k] = torch.from_numpy(np.ascontiguousarray(rows, np.float32)).to(
            self.data.device)
        self.n += k
        self.size.fill_(float(self.n))

    def sample(self) -> Transitions:
        u = torch.rand(self.batch_size, generator=self.generator, device=self.data.device)
        idx = (u * self.size).long()           # u < 1, so idx <= size - 1               [B]
        b = self.data[idx]
        o, a = self.obs_dim, self.act_dim
        return Transitions(b[:, :o], b[:, o:o + a], b[:, o + a], b[:, o + a + 1:2 * o + a + 1],
                           b[:, -1])


class VectorTD3:
    def __init__(self, cfg: VectorTD3Config, workdir: Path):
        if cfg.n_envs < 1 or cfg.snapshot_every % cfg.n_envs:
            raise SystemExit(f"--n-envs must be >= 1 and divide --snapshot-every "
                             f"({cfg.snapshot_every}); got {cfg.n_envs}")
        self.cfg, self.workdir = cfg, workdir
        fam = env_family(cfg.env)
        self.gym_id, self.obs_dim, self.act_dim = fam.gym_id_v5, fam.obs_dim, fam.act_dim
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but no CUDA device is available; use --device cpu "
                             "(or online_td3 on one CPU core)")
        self.rng = np.random.default_rng(cfg.seed)
        self.agent = FastTD3BC(self.obs_dim, self.act_dim, TD3BCConfig(
            actor_lr=cfg.lr, critic_lr=cfg.lr, hidden=cfg.hidden, batch_size=cfg.batch_size,
            alpha=None), self.device, seed=cfg.seed)
        self.replay = DeviceReplay(cfg.total_steps + cfg.n_envs, self.obs_dim, self.act_dim,
                                   cfg.batch_size, self.device,
                                   torch.Generator(device=self.device).manual_seed(cfg.seed + 1))
        self.step = 0

    # -- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        atomic_np_save(self.replay.data[:self.replay.n].cpu().numpy(),
                       self.workdir / "buffer.npy")
        atomic_torch_save({"config": dataclasses.asdict(self.cfg), "agent": self.agent.state_dict(),
                      "step": self.step, "np_rng": self.rng.bit_generator.state,
                           "replay_generator": self.replay.generator.get_state()},
                          self.workdir / "state.pt")

    def try_resume(self) -> bool:
        path = self.workdir / "state.pt"
        if not path.exists():
            return False
        sd = torch.load(path, weights_only=False, map_location="cpu")
        self.agent.load_state_dict(sd["agent"])
        self.step = int(sd["step"])
        self.rng.bit_generator.state = sd["np_rng"]
        self.replay.generator.set_state(sd["replay_generator"])
        buf = self.workdir / "buffer.npy"
        if not buf.exists():
            raise SystemExit(f"{buf} is missing (state.pt is at step {self.step}); a vectorized "
                             f"run resumes only with its buffer: start a fresh --workdir")
        self.replay.add(np.load(buf))
        return True

    # -- loop ------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        n = len(obs)
        if self.step < self.cfg.start_steps:
            return self.rng.uniform(-1, 1, (n, self.act_dim)).astype(np.float32)
        with torch.no_grad():
            a = self.agent.actor(torch.as_tensor(obs, dtype=torch.float32,
                                                 device=self.device)).cpu().numpy()
        a = a + self.rng.normal(0, self.cfg.expl_noise, a.shape)
        return np.clip(a, -1, 1).astype(np.float32)

    def snapshot(self, step: int, wall_s: float) -> tuple[dict, float]:
        """Store the actor and evaluate it as stored (float16, numpy), logging the result;
        returns (stored weights, mean return)."""
        weights = save_snapshot(self.workdir, step, actor_to_numpy(self.agent.actor))
        rets = evaluate(NumpyPolicy(weights), self.gym_id, self.cfg.eval_episodes,
                        seed=10_000 + step)
        append_eval_log(self.workdir, step, rets, wall_s)
        return weights, float(rets.mean())

    def _make_envs(self):
        make = [functools.partial(gym.make, self.gym_id)] * self.cfg.n_envs
        cls = gym.vector.AsyncVectorEnv if self.cfg.async_envs else gym.vector.SyncVectorEnv
        return cls(make, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def train(self) -> None:
        cfg = self.cfg
        resumed = self.try_resume()
        # td3's config keys the export reads (start_steps, expl_noise, seed, target_return)
        (self.workdir / "config.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), "algorithm": "TD3 (dawm_fast.behavior.vector_td3)"},
            indent=1))
        print(f"[vec-td3] {self.gym_id} x{cfg.n_envs} on {self.device}, seed {cfg.seed}, "
              f"{'resumed at step ' + str(self.step) if resumed else 'fresh'}; update path: "
              f"{self.agent.path_description}", flush=True)
        envs = self._make_envs()
        obs, _ = envs.reset(seed=[cfg.seed * 10_000 + self.step + i for i in range(cfg.n_envs)])
        t0, t_rate, s_rate, pending = time.time(), time.time(), self.step, 0
        try:
            while self.step < cfg.total_steps:
                act = self.act(obs)
                next_obs, rew, term, trunc, info = envs.step(act)
                real_next = np.array(next_obs, copy=True)
                for i in np.flatnonzero(term | trunc):      # SAME_STEP: next_obs is the reset
                    real_next[i] = info["final_obs"][i]
                self.replay.add(np.concatenate([obs, act, rew[:, None], real_next,
                                                term[:, None]], axis=1))
                obs = next_obs
                prev, self.step = self.step, self.step + cfg.n_envs
                if self.step >= cfg.start_steps:
                    pending += cfg.n_envs                   # update-to-data ratio 1
                    while pending > 0:
                        pending -= self.agent.update_from(self.replay)[1]
                if self.step // cfg.snapshot_every == prev // cfg.snapshot_every:
                    continue
                snap_step = self.step // cfg.snapshot_every * cfg.snapshot_every
                weights, mean_ret = self.snapshot(snap_step, time.time() - t0)
                rate = (self.step - s_rate) / (time.time() - t_rate)
                eta = (cfg.total_steps - self.step) / max(rate, 1e-9) / 60
                print(f"[vec-td3] step {snap_step:>7d}  eval return {mean_ret:8.1f}  "
                      f"{rate:6.0f} steps/s  ETA {eta:5.1f} min (at most)", flush=True)
                t_rate, s_rate = time.time(), self.step
                self.save()
                if (cfg.target_return is not None and mean_ret >= cfg.target_return
                        and reached_target(weights, self.gym_id, snap_step, cfg.target_return,
                                           cfg.target_noisy_return, "vec-td3")):
                    break
        finally:
            envs.close()
        self.save()


def main(argv=None) -> None:
    cfg, workdir = parse_config(VectorTD3Config, argv, __doc__)
    VectorTD3(cfg, workdir).train()


if __name__ == "__main__":
    main()
