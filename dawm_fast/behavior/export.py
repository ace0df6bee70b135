"""Pick the medium and expert behaviour policies from an online TD3 run and write the small files
the embedded datasets are generated from (``dawm_fast/data/policies/<env>.{npz,json}``).

    python -m dawm_fast.behavior.export --env walker2d --workdir runs/behavior/walker2d

- expert: among the run's best logged snapshots, the one whose lower score of 10 deterministic
  episodes and 50 episodes with the dataset's action noise (the rollouts the expert dataset is
  made of) is highest, preferring those with no noisy episode collapsed (a fall or flip: under
  70% of the median)
- medium: the snapshot whose 10-episode return is closest to `medium_fraction` of the expert's,
  among those logged between a third and a half of it (the D4RL recipe's "about a third")
- replay: every snapshot before the medium one (float16), from which medium-replay is rebuilt

``--medium-workdir`` takes the medium and replay policies from another run of the same env (for
example when the expert's run jumped past the medium range between two snapshots).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from dawm_fast.data.embedded import POLICY_DIR, RECIPE
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.data.tasks import env_family
from dawm_fast.evaluation.rollout import evaluate_policy

EVAL_SEED = 777


def evaluate(policy, gym_id: str, episodes: int = 10, seed: int = EVAL_SEED,
             noise: float = 0.0) -> np.ndarray:
    """Returns of `episodes` episodes (all side by side); with `noise`, Gaussian action noise as
    the dataset rollouts add it (embedded.RECIPE.rollout_noise)."""
    return evaluate_policy(policy, gym_id, episodes, seed, action_noise=noise).returns


def random_policy(act_dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1, 1, (len(obs), act_dim)).astype(np.float32)


def _run_log(workdir: Path) -> list[tuple[int, float]]:
    """(step, logged eval return) of every snapshot the run kept."""
    with open(workdir / "log.csv") as f:
        log = [(int(r["step"]), float(r["eval_return_mean"])) for r in csv.DictReader(f)]
    return [(s, r) for s, r in log if _snapshot(workdir, s).exists()]


def _snapshot(workdir: Path, step: int) -> Path:
    return workdir / "snapshots" / f"actor_{step:07d}.npz"


def _train_command(env: str, cfg: dict, workdir: Path) -> str:
    """The command line that trains (or resumes) a run with this config.json."""
    # Which trainer made the run: vector_td3's config has n_envs; online_td3 has "algo".
    if "n_envs" in cfg:
        module, extra = "vector_td3", f" --n-envs {cfg['n_envs']} --device {cfg['device']}"
    else:
        module = "online_td3"
        extra = f" --algo {cfg['algo']}" if cfg.get("algo", "td3") != "td3" else ""
    target = "".join(f" --{key.replace('_', '-')} {cfg[key]}"
                     for key in ("total_steps", "target_return", "target_noisy_return")
                     if cfg.get(key) is not None)
    return (f"python -m dawm_fast.behavior.{module} --env {env}{extra} --workdir {workdir} "
            f"--seed {cfg['seed']}{target}")


NOISY_EPISODES = 50       # noisy evaluation of an expert candidate (collapses are rare events)
COLLAPSE_FRACTION = 0.7   # a noisy episode under this share of the median return collapsed


def collapses(returns: np.ndarray) -> int:
    """Episodes that fell or flipped: far under the policy's median return."""
    return int((returns < COLLAPSE_FRACTION * np.median(returns)).sum())


def export(env: str, workdir: Path, out_dir: Path = POLICY_DIR, n_expert_candidates: int = 16,
           medium_fraction: float = 0.4, medium_range=(1 / 3, 1 / 2), command: str = "",
           medium_workdir: Path | None = None) -> dict:
    fam = env_family(env)
    log = _run_log(workdir)
    load = lambda step: dict(np.load(_snapshot(workdir, step)))
    medium_workdir = medium_workdir or workdir
    same_run = medium_workdir.resolve() == workdir.resolve()
    med_log = log if same_run else _run_log(medium_workdir)
    load_med = lambda step: dict(np.load(_snapshot(medium_workdir, step)))

    # The expert is the candidate whose worse score, with or without the dataset's action noise,
    # is best, among those that never collapse under that noise: the expert dataset is made of
    # noisy rollouts, and a policy that is excellent deterministically can fall under noise
    # (seen: walker2d SAC at 520k, 4,078 deterministic, 2,893 noisy), or the other way round
    # (hopper SAC at 270k: 3,196 noisy, 2,901 ± 408 deterministic, one fall in ten); halfcheetah
    # SAC snapshots at ~11,000 flipped onto their backs in 1-8 of 50 noisy episodes.
    noise = RECIPE.rollout_noise
    best = sorted(log, key=lambda x: -x[1])[:n_expert_candidates]
    policies = {s: NumpyPolicy(load(s)) for s, _ in best}
    noisy = {s: evaluate(p, fam.gym_id_v5, episodes=NOISY_EPISODES, noise=noise)
             for s, p in policies.items()}
    plain = {s: evaluate(p, fam.gym_id_v5) for s, p in policies.items()}
    for s, _ in best:
        print(f"[export] expert candidate {s}: {plain[s].mean():.1f} ± {plain[s].std():.1f} "
              f"deterministic, {noisy[s].mean():.1f} ± {noisy[s].std():.1f} with action noise "
              f"{noise}, {collapses(noisy[s])} collapsed")
    expert_step = max(noisy, key=lambda s: (collapses(noisy[s]) == 0,
                                            min(noisy[s].mean(), plain[s].mean())))
    expert_ret, expert_noisy = plain[expert_step], noisy[expert_step]
    print(f"[export] expert: step {expert_step}, return {expert_ret.mean():.1f} ± "
          f"{expert_ret.std():.1f} deterministic, {expert_noisy.mean():.1f} ± "
          f"{expert_noisy.std():.1f} with noise {noise} (10 and {NOISY_EPISODES} episodes), "
          f"{collapses(expert_noisy)} collapsed")

    lo, hi = (f * expert_ret.mean() for f in medium_range)
    cands = [s for s, r in med_log if lo <= r <= hi and (s < expert_step or not same_run)]
    if not cands:
        raise SystemExit(f"no snapshot of {medium_workdir} logged a return in [{lo:.0f}, "
                         f"{hi:.0f}]; take the medium policy from another run "
                         f"(--medium-workdir) or snapshot more often (--snapshot-every)")
    med_evals = {s: evaluate(NumpyPolicy(load_med(s)), fam.gym_id_v5) for s in cands[:8]}
    target = medium_fraction * expert_ret.mean()
    medium_step = min(med_evals, key=lambda s: abs(med_evals[s].mean() - target))
    medium_ret = med_evals[medium_step]
    print(f"[export] medium: step {medium_step}, return {medium_ret.mean():.1f} ± "
          f"{medium_ret.std():.1f} (10 episodes; target {target:.0f})")
    random_ret = evaluate(random_policy(fam.act_dim, 0), fam.gym_id_v5)

    cfg = json.loads((workdir / "config.json").read_text())
    med_cfg = json.loads((medium_workdir / "config.json").read_text())
    replay_steps = [s for s, _ in med_log if s <= medium_step]
    arrays = {}
    for prefix, loader, step, dtype in ([("expert", load, expert_step, np.float32),
                                         ("medium", load_med, medium_step, np.float32)]
                                        + [(f"replay_{i:03d}", load_med, s, np.float16)
                                           for i, s in enumerate(replay_steps)]):
        for k, v in loader(step).items():
            arrays[f"{prefix}/{k}"] = np.asarray(v, dtype) if k != "max_action" else v
    # Which trainer made the run: vector_td3 writes "algorithm"; online_td3 has "algo".
    algorithm = cfg.get("algorithm") or (f"{cfg.get('algo', 'td3').upper()} "
                                         f"(dawm_fast.behavior.online_td3)")
    train = lambda c, wd: _train_command(env, c, wd)
    meta = {
        "env": env, "gym_id": fam.gym_id_v5, "algorithm": algorithm,
        "command": command or " && ".join(
            [train(cfg, workdir)] + ([] if same_run else [train(med_cfg, medium_workdir)])
            + [f"python -m dawm_fast.behavior.export --env {env} --workdir {workdir}"
               + ("" if same_run else f" --medium-workdir {medium_workdir}")]),
        "train_config": cfg,
        **({} if same_run else {"medium_run": str(medium_workdir), "medium_train_config": med_cfg,
                                "medium_training_log": med_log}),
        "expert_step": expert_step, "expert_return": float(expert_ret.mean()),
        "expert_return_std": float(expert_ret.std()),
        "expert_return_noisy": float(expert_noisy.mean()),
        "expert_return_noisy_std": float(expert_noisy.std()), "rollout_noise": noise,
        "expert_noisy_episodes": len(expert_noisy),
        "expert_noisy_collapses": collapses(expert_noisy),
        "medium_step": medium_step, "medium_return": float(medium_ret.mean()),
        "medium_return_std": float(medium_ret.std()),
        "random_return": float(random_ret.mean()),
        "eval": "10 deterministic episodes, seeds 777..786",
        # The trainer snapshots every snapshot_every steps; snapshot i acted from its step on.
        "replay": {"snapshot_steps": replay_steps, "steps": medium_step,
                   "start_steps": med_cfg["start_steps"],
                   "expl_noise": med_cfg["expl_noise"]},
        "training_log": log,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / f"{env}.npz", **arrays)
    (out_dir / f"{env}.json").write_text(json.dumps(meta, indent=1))
    print(f"[export] wrote {out_dir / (env + '.npz')} ({len(replay_steps)} replay snapshots)")
    return meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", required=True)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--out-dir", type=Path, default=POLICY_DIR)
    p.add_argument("--medium-fraction", type=float, default=0.4)
    p.add_argument("--medium-workdir", type=Path, default=None,
                   help="take the medium and replay policies from this run (default: --workdir)")
    a = p.parse_args(argv)
    export(a.env, a.workdir, a.out_dir, medium_fraction=a.medium_fraction,
           medium_workdir=a.medium_workdir)


if __name__ == "__main__":
    main()
