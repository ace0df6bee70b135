"""IQL checkpoints and seeds on one task: how much a score moves between nearby checkpoints.

    # score every saved copy of a run's rl_ckpt.pt on the same episode seeds
    python benchmarks/iql_checkpoints.py checkpoints --episodes 10 RUN/snaps/*.pt
    # per-seed final score and mean of the last three training evaluations, and their seed mean
    python benchmarks/iql_checkpoints.py summary RUN_SEED0 RUN_SEED1 ...
    # each run's final policy (agent.pt) on many fresh episodes, by how its episodes end
    python benchmarks/iql_checkpoints.py finals --episodes 50 RUN_SEED0 RUN_SEED1 ...

``checkpoints`` prints one JSON line per checkpoint (in update order): the actor LR, the mean
log-std, the policy's BC error on every 20th dataset row, how far its mean action moved from the
previous checkpoint on those rows, and the score with every episode's length (a walker episode
that falls ends early). The pipeline overwrites rl_ckpt.pt every ``rl_checkpoint_every`` updates;
copy it aside while the run goes to keep them all. Measured with it: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch


def checkpoints(paths: list[str], env: str, episodes: int, seed: int) -> None:
    from dawm_fast.data.loader import load_dataset
    from dawm_fast.data.scores import normalized_score
    from dawm_fast.data.tasks import parse_task
    from dawm_fast.evaluation.rollout import evaluate_policy

    ds = load_dataset(env, "embedded")
    obs = torch.as_tensor(ds.observations[::20])                             # [n, obs]
    act = torch.as_tensor(ds.actions[::20])                                  # [n, act]
    cks = sorted((torch.load(p, weights_only=False, map_location="cpu") for p in paths),
                 key=lambda c: c["step"])
    prev = None
    for ck in cks:
        agent = _agent(ck["agent"], ds)
        with torch.no_grad():
            mean = torch.as_tensor(agent.act(obs.numpy()))                   # [n, act]
            log_std = getattr(agent.actor, "log_std", None)
            log_std = None if log_std is None else float(log_std.mean())
        row = {"step": ck["step"], "actor_lr": float(agent.actor_optimizer.param_groups[0]["lr"]),
               "log_std_mean": log_std, "bc_mse": float((mean - act).square().mean()),
               "action_change": None if prev is None else float((mean - prev).abs().mean())}
        prev = mean
        if episodes:
            res = evaluate_policy(agent.act, ds.eval_env_id, episodes, seed)
            scores, _ = normalized_score(parse_task(env)[0].name, res.returns)
            row.update(score=float(scores.mean()), score_std=float(scores.std()),
                       lengths=res.lengths.tolist())
        print(json.dumps(row), flush=True)


def _agent(state: dict, ds):
    from dawm_fast.rl.iql import IQL, IQLConfig

    # Checkpoints written before seed, gamma and max_steps left IQLConfig still carry them: none
    # matters here (the weights, optimizers and LR schedule all come from the checkpoint).
    known = {f.name for f in dataclasses.fields(IQLConfig)}
    agent = IQL(ds.obs_dim, ds.act_dim,
                IQLConfig(**{k: v for k, v in state["config"].items() if k in known}))
    agent.load_state_dict(state)
    return agent


# How a walker episode ends: it falls at the start (the policy never gets going), falls later,
# or runs the full 1000 steps.
START_FALL_STEPS = 50


def finals(runs: list[str], env: str, episodes: int, seed: int) -> None:
    """Each run's final policy on `episodes` episodes (resets seed + i, the same for every run):
    score, and how many episodes fell at the start, fell later, or ran the full 1000 steps."""
    from dawm_fast.data.loader import load_dataset
    from dawm_fast.data.scores import normalized_score
    from dawm_fast.data.tasks import parse_task
    from dawm_fast.evaluation.rollout import evaluate_policy

    ds = load_dataset(env, "embedded")
    for run in runs:
        agent = _agent(torch.load(Path(run) / "agent.pt", weights_only=False,
                                  map_location="cpu")["agent"], ds)
        res = evaluate_policy(agent.act, ds.eval_env_id, episodes, seed)
        scores, _ = normalized_score(parse_task(env)[0].name, res.returns)
        n = res.lengths
        print(json.dumps({"run": Path(run).name, "episodes": episodes, "seed": seed,
                          "score": float(scores.mean()), "score_std": float(scores.std()),
                          "fell_at_start": int((n < START_FALL_STEPS).sum()),
                          "fell_later": int(((n >= START_FALL_STEPS) & (n < 1000)).sum()),
                          "full_episodes": int((n >= 1000).sum()),
                          "full_episode_score": float(scores[n >= 1000].mean())
                          if (n >= 1000).any() else None}), flush=True)


def summary(runs: list[str]) -> None:
    finals, last3s = [], []
    print("| run | seed | final (10 ep.) | last three evaluations | their mean |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        run = Path(run)
        res = json.loads((run / "results.json").read_text())
        with open(run / "metrics.csv") as f:
            evals = sorted((int(r["step"]), float(r["value"])) for r in csv.DictReader(f)
                           if r["stage"] == "rl" and r["metric"] == "eval_score")
        last3 = [v for _, v in evals[-3:]]
        finals.append(res["final_score_mean"])
        last3s.append(float(np.mean(last3)))
        print(f"| {run.name} | {res['seed']} | {res['final_score_mean']:.1f} ± "
              f"{res['final_score_std']:.1f} | "
              f"{', '.join(f'{v:.1f} @{s // 1000}k' for s, v in evals[-3:])} | {last3s[-1]:.1f} |")
    print(f"\nseed mean ± std (n={len(runs)}): final {np.mean(finals):.1f} ± {np.std(finals):.1f}; "
          f"last three {np.mean(last3s):.1f} ± {np.std(last3s):.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoints")
    c.add_argument("paths", nargs="+")
    c.add_argument("--env", default="walker2d-medium-expert")
    c.add_argument("--episodes", type=int, default=10)
    c.add_argument("--seed", type=int, default=777_000, help="episode i resets with seed + i")
    s = sub.add_parser("summary")
    s.add_argument("runs", nargs="+")
    f = sub.add_parser("finals")
    f.add_argument("runs", nargs="+")
    f.add_argument("--env", default="walker2d-medium-expert")
    f.add_argument("--episodes", type=int, default=50)
    f.add_argument("--seed", type=int, default=888_000, help="episode i resets with seed + i")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "checkpoints":
        checkpoints(a.paths, a.env, a.episodes, a.seed)
    elif a.cmd == "finals":
        finals(a.runs, a.env, a.episodes, a.seed)
    else:
        summary(a.runs)


if __name__ == "__main__":
    main()
