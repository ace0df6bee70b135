"""The files a behaviour-training run keeps in its workdir, written the same way by every trainer
(``online_td3``, ``vector_td3``), so ``export`` reads any of them:

    config.json   the trainer's config            state.pt    networks, optimizers, RNG states
    log.csv       step, eval return mean/std, wall s          buffer.npy  the replay buffer
    snapshots/actor_XXXXXXX.npz   float16 actor weights (numpy_policy layout)
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
from pathlib import Path

import numpy as np


def atomic_np_save(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def save_snapshot(workdir: Path, step: int, weights: dict) -> dict:
    """Store an actor as ``snapshots/actor_<step>.npz`` in float16 (small enough to commit with a
    run that spans sessions) and return the weights as stored."""
    snap_dir = workdir / "snapshots"
    snap_dir.mkdir(exist_ok=True)
    stored = {k: (np.asarray(v, np.float16) if k != "max_action" else v)
              for k, v in weights.items()}
    np.savez(snap_dir / f"actor_{step:07d}.npz", **stored)
    return stored


def list_snapshots(workdir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``save_snapshot`` file in the workdir, by step."""
    return sorted((int(p.stem.split("_")[1]), p)
                  for p in (workdir / "snapshots").glob("actor_*.npz"))


def append_eval_log(workdir: Path, step: int, returns: np.ndarray, wall_s: float) -> None:
    log = workdir / "log.csv"
    new = not log.exists()
    with open(log, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "eval_return_mean", "eval_return_std", "wall_s"])
        w.writerow([step, f"{returns.mean():.1f}", f"{returns.std():.1f}", f"{wall_s:.0f}"])


def parse_config(config_cls, argv, description: str):
    """``--workdir`` plus one flag per field of the trainer's config dataclass (bools as
    --x/--no-x; ``target_*`` floats that default to None). Returns (config, workdir),
    the workdir created."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", required=True, type=Path)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, default=f.default, action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(flag, default=f.default,
                           type=float if f.name.startswith("target_") else type(f.default))
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return (config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}),
            args.workdir)


def reached_target(weights: dict, gym_id: str, step: int, target_return: float | None,
                   target_noisy_return: float | None, tag: str) -> bool:
    """The stop rule of a behaviour run, checked once a logged evaluation reaches
    ``target_return``: 10 deterministic episodes of the snapshot as stored (float16, what export
    ships) reach ``target_return``, and, when set, 10 episodes with the datasets' action noise
    reach ``target_noisy_return`` (an expert that falls under that noise makes a poor expert
    dataset)."""
    from dawm_fast.behavior.export import evaluate        # lazy: export imports the data layer
    from dawm_fast.data.embedded import RECIPE
    from dawm_fast.data.numpy_policy import NumpyPolicy
    policy = NumpyPolicy(weights)
    rets = evaluate(policy, gym_id, 10, seed=20_000 + step)
    print(f"[{tag}] 10-episode check: {rets.mean():.1f} ± {rets.std():.1f}", flush=True)
    if rets.mean() < target_return:
        return False
    if target_noisy_return is not None:
        noisy = evaluate(policy, gym_id, 10, seed=30_000 + step, noise=RECIPE.rollout_noise)
        print(f"[{tag}] 10 episodes with action noise {RECIPE.rollout_noise}: "
              f"{noisy.mean():.1f} ± {noisy.std():.1f}", flush=True)
        if noisy.mean() < target_noisy_return:
            return False
    print(f"[{tag}] target return reached; stopping", flush=True)
    return True

