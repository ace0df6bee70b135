"""Does return guidance bend the world model's dynamics? Fresh generations from one trained world
model under several return targets, each replayed in the simulator (issue #18).

    python benchmarks/guidance_diagnosis.py SWEEP/wm/<task>_seed<s>_<fingerprint> \
        --targets 0.7,0.5,own --weights 1.2 --starts 5000 [--judge RL_RUN] [--json out.json]

A target is a normalized return-to-go g (the pipeline's --target-return) or `own[*GAIN]`: each
start's own discounted return-to-go in the data (what the world model saw beside that state in
training), times GAIN (the pipeline's target_mode=own, target_gain).
For each (target, guidance weight) the same starts are generated and the synthetic transitions
checked in the simulator (dawm_fast.evaluation.dynamics_check: falls missed and made up, one step
at a time and over whole windows replayed open loop from their real start). If the model bends physics to meet
a high target, falls go missing as the target rises above what the start's data reached.

Read-only: the world model directory is not written (normalizers are copied to a temp dir).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from value_diagnosis import data_stats, load_run, synthetic_check, target_bias


def generate(pipe, model, idm, rows: np.ndarray, g: np.ndarray, weight: float,
             seed: int) -> dict:
    from dawm_fast.sampling.generate import generate_transitions

    cfg, ds = pipe.cfg, pipe.dataset
    sampling = dataclasses.replace(cfg.sampling, guidance_weight=weight)
    s0 = torch.as_tensor(pipe.state_norm.normalize(ds.observations[rows]))
    a0 = torch.as_tensor(ds.actions[rows])
    syn = generate_transitions(
        model, idm, s0, a0, torch.as_tensor(g, dtype=torch.float32), pipe.family,
        pipe.state_norm.unnormalize, lambda r: pipe.reward_norm.unnormalize(r[:, None])[:, 0],
        sampling, torch.Generator().manual_seed(seed), backend=cfg.backend,
        first_rewards=ds.rewards[rows])
    return {k: syn[k] for k in ("observations", "actions", "rewards", "next_observations",
                                "terminals")}


def targets(cfg, ds, rtg_scale: float, rows: np.ndarray, target: str) -> np.ndarray:
    """A --targets entry's g for each start: a number, `own` or `own*GAIN` (target_mode=own)."""
    from dawm_fast.pipeline import guidance_targets

    if target.startswith("own"):
        gain = float(target.split("*", 1)[1]) if "*" in target else 1.0
        cfg = dataclasses.replace(cfg, target_mode="own", target_gain=gain)
    else:
        cfg = dataclasses.replace(cfg, target_mode="fixed", target_return=float(target))
    return guidance_targets(cfg, ds, rtg_scale, rows)


def main(argv=None) -> None:
    from dawm_fast.config import config_from_dict
    from dawm_fast.pipeline import Pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("world_model_dir", type=Path)
    p.add_argument("--targets", default="own,0.5,0.7")
    p.add_argument("--weights", default="1.2")
    p.add_argument("--starts", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--judge", type=Path,
                   help="an RL run dir with agent.pt (a plain run): also report the TD-target "
                        "bias of each variant's synthetic rows against the simulator's under its "
                        "critic, by window step (value_diagnosis.target_bias)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wm = args.world_model_dir.resolve()
    cfg = config_from_dict(json.loads((wm / "config.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(wm / "normalizers", Path(tmp) / "normalizers")
        cfg = dataclasses.replace(cfg, world_model_dir=str(wm), backend="reference",
                                  device="cpu")
        pipe = Pipeline(cfg, Path(tmp))
        pipe.stage_data()
        ds = pipe.dataset
        real = {k: getattr(ds, k) for k in ("observations", "actions", "rewards",
                                            "next_observations", "terminals")}
        rng = np.random.default_rng(args.seed)
        rows = rng.choice(len(ds), args.starts, replace=False)
        model, idm = pipe.load_world_model(), pipe.load_idm()      # once for every variant
        judge = None
        if args.judge:
            from dawm_fast.rl.buffer import compute_obs_stats, iql_reward_scale

            judge_cfg, judge = load_run(args.judge)
            mean, std = compute_obs_stats(ds.observations)
            scale = (iql_reward_scale(ds.rewards, ds.episode_ends) if judge_cfg.algo == "iql"
                     and judge_cfg.iql.normalize_reward else None)
        results = []
        for weight in (float(w) for w in args.weights.split(",")):
            for target in args.targets.split(","):
                g = targets(cfg, ds, pipe.family.rtg_scale, rows, target)
                syn = generate(pipe, model, idm, rows, g, weight, args.seed + 4)
                res = {"target": target, "guidance_weight": weight,
                       "target_mean": float(g.mean()), "data": data_stats(syn),
                       "simulator": synthetic_check(cfg.env, syn, real, args.seed + 1)}
                if judge is not None:
                    res["target_bias"] = target_bias(judge, judge_cfg.algo, cfg.env, syn, mean,
                                                     std, scale, len(syn["rewards"]),
                                                     args.seed + 2)
                print(json.dumps(res), flush=True)
                results.append(res)
    if args.json:
        args.json.write_text(json.dumps({"world_model_dir": str(wm), "starts": args.starts,
                                         "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
