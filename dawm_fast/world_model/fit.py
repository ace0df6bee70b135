"""Fitting the world model: its training windows (the x0 layout) and its resumable training loop.

The loop runs on every rank under torchrun (data-parallel, `World`); rank 0 alone logs and
writes its checkpoint.
"""
from __future__ import annotations

import signal

import numpy as np
import torch

from dawm_fast import backends, distributed
from dawm_fast.data import OfflineDataset, make_windows
from dawm_fast.data.normalizers import Normalizer
from dawm_fast.distributed import World
from dawm_fast.run_io import (Interrupted, MetricsLog, Progress, RunError, StageCheckpoint,
                              deferred_stop, raise_if_stopped, stop_requested)
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.training import WindowBatcher, WorldModelTrainerConfig

# Under torchrun the ranks agree whether to stop (an all-reduce, so a host sync) every this many
# steps and at every checkpoint, not at every step.
STOP_CHECK_EVERY = 100
# Offsets of the run seed, one per random stream of the stage (the model's init uses seed + 1).
TRAINER_SEED_OFFSET, BATCH_SEED_OFFSET = 2, 3


def training_windows(ds: OfflineDataset, state_norm: Normalizer, reward_norm: Normalizer,
                     horizon: int, gamma: float, rtg_scale: float,
                     device: torch.device, past_falls: bool = True,
                     past_reward: str = "hold") -> dict[str, torch.Tensor]:
    """Every length-`horizon` window of the dataset (with `past_falls`, also those that run
    past a fall: data.windows) as the world model's training tensors:
    x0 [M, T, obs + act + 1] = (normalized states, a_t at step 0 only, normalized rewards), the
    normalized return-to-go g_t [M] and a_t [M] of its first step."""
    w = make_windows(ds, horizon, gamma, rtg_scale, past_falls, past_reward)
    if len(w) == 0:
        raise RunError(f"{ds.name}: no episode is at least {horizon} steps long; the dataset "
                       f"cannot train a horizon-{horizon} world model")
    m, t_len = w.states.shape[:2]
    o, a = ds.obs_dim, ds.act_dim
    x0 = np.zeros((m, t_len, o + a + 1), np.float32)                          # [M, T, C]
    x0[:, :, :o] = state_norm.normalize(w.states)
    x0[:, 0, o:o + a] = w.first_actions
    x0[:, :, -1] = reward_norm.normalize(w.rewards[..., None])[..., 0]
    return {"x0": torch.from_numpy(x0).to(device),
            "returns": torch.from_numpy(w.returns_to_go).to(device),
            "actions": torch.from_numpy(w.first_actions).to(device)}


def fit_world_model(model: DiffusionWorldModel, windows: dict[str, torch.Tensor],
                    cfg: WorldModelTrainerConfig, *, backend: str, seed: int,
                    checkpoint: StageCheckpoint, resume: dict | None, metrics: MetricsLog | None,
                    progress_every_s: float, world: World = World()):
    """Train `model` for `cfg.steps` steps (from `resume`, a checkpoint, when given); return the
    trainer (its EMA model is the product) and {"steps", "parameters"}. SIGINT/SIGTERM: the
    checkpoint is written at the next step boundary, then Interrupted is raised."""
    main, device = world.is_main, windows["x0"].device
    if world.active and cfg.batch_size % world.size:
        raise RunError(f"[world_model] the batch of {cfg.batch_size} windows does not split "
                       f"over {world.size} processes; launch a world size that divides it, or "
                       f"change wm_training.batch_size")
    trainer = backends.world_model_trainer(backend, model, cfg, seed=seed + TRAINER_SEED_OFFSET,
                                           shard=world.shard if world.active else None)
    batch_gen = torch.Generator(device=device).manual_seed(seed + BATCH_SEED_OFFSET)
    if resume is not None:
        def restore(ck):
            trainer.load_state_dict(ck["trainer"])
            batch_gen.set_state(ck["batch_generator"])
        checkpoint.restore(resume, restore)
        if main:
            metrics.truncate_after("world_model", trainer.step)
            print(f"[world_model] resumed at step {trainer.step:,}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    path = trainer.path_description
    if world.active:
        path = (f"DistributedDataParallel over {world.size} processes, "
                f"{cfg.batch_size // world.size} windows each (eager step)")
    if main:
        print(f"[world_model] temporal U-Net {n_params / 1e6:.2f}M parameters, "
              f"{cfg.steps:,} steps at batch {cfg.batch_size}"
              f"{' in bf16 autocast' if cfg.bf16 else ''}; training path: {path}", flush=True)
    # Windows stay on the device; each step draws its batch there (inside the step's CUDA graph
    # on the fast path).
    batcher = WindowBatcher(windows["x0"], windows["returns"], windows["actions"],
                            cfg.batch_size, batch_gen, shard=world.shard)
    prog = Progress("world_model", cfg.steps, trainer.step, progress_every_s)
    losses, last_loss = [], float("nan")
    with deferred_stop():     # SIGINT/SIGTERM: checkpoint at the next step boundary, stop
        while trainer.step < cfg.steps:
            out = trainer.train_step(batcher)
            losses.append(out["loss"])  # a float, or a device tensor (fast path: no sync)
            step = trainer.step
            if step % 100 == 0 or step == cfg.steps:
                # the global batch's loss: the mean over ranks (all ranks see the same value)
                last_loss = float(distributed.mean_over_ranks(
                    torch.stack([torch.as_tensor(v) for v in losses]).mean(), world))
                checkpoint.check_finite({"the loss": last_loss}, step)
                if main:
                    metrics.log("world_model", step, loss=last_loss)
                losses = []
            if main:
                prog.update(step, loss=last_loss)
            checkpoint_due = step % cfg.checkpoint_every == 0 or step == cfg.steps
            stopping = _agreed_stop(step, checkpoint_due, world, device)
            if not main:
                if stopping:
                    raise Interrupted(signal.SIGTERM)
                continue
            if checkpoint_due or stopping:
                checkpoint.save({"trainer": trainer.state_dict(),
                                 "batch_generator": batch_gen.get_state()}, step)
                if stopping and not stop_requested():    # another rank was signalled
                    raise Interrupted(signal.SIGTERM)
                raise_if_stopped()
    return trainer, {"steps": trainer.step, "parameters": n_params}


def _agreed_stop(step: int, checkpoint_due: bool, world: World, device) -> bool:
    """Whether to stop at this step (a SIGINT/SIGTERM is pending): one process decides alone;
    ranks decide together, at checkpoints and every STOP_CHECK_EVERY steps, so a rank never
    stops (or writes) while the others go on into the next step's all-reduce."""
    if not world.active:
        return stop_requested()
    if checkpoint_due or step % STOP_CHECK_EVERY == 0:
        return distributed.any_rank(stop_requested(), world, device)
    return False
