"""How far several world models' synthetic rewards are from the simulator's, on the same rows.

    python benchmarks/reward_error.py --env hopper zero=RUN_A/synthetic.npz hold=RUN_B/synthetic.npz \
        [--n 20000] [--fast-reward 3.5] [--json out.json]

For each synthetic.npz: `n` transitions whose observation pins down the simulator state, drawn with
one seed, replayed in the simulator (evaluation.dynamics_check.simulate); the reward error's RMSE,
median, bias, 99th percentile, the RMSE without its worst 1%, the same on rows whose simulator
reward is at least --fast-reward (fast hops), and by place in the window (step 0's reward is the
dataset's). dynamics_check.json gives the RMSE of one run; this compares runs side by side
(benchmarks/RESULTS.md: past_fall_reward).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from dawm_fast.data.tasks import env_family
from dawm_fast.evaluation.dynamics_check import pins_down_state, simulate, window_positions
from dawm_fast.run_io import load_arrays


def reward_errors(family, path: str, n: int, seed: int, fast_reward: float) -> dict:
    z = load_arrays(path, "generation", ("observations", "actions", "rewards", "next_observations"))
    ok = np.flatnonzero(pins_down_state(family, z["observations"]))
    idx = np.sort(np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False))
    obs, act, rew = (np.asarray(z[k][idx], np.float64) for k in ("observations", "actions", "rewards"))
    _, sim_r, _ = simulate(family, obs, act)
    e = rew - sim_r
    pos = window_positions(z["observations"], z["next_observations"])[idx]
    fast = sim_r >= fast_reward

    def rms(x):
        return float(np.sqrt(np.mean(x ** 2))) if x.size else None

    return {"n": int(idx.size), "rmse": rms(e), "median_abs": float(np.median(np.abs(e))),
            "bias": float(e.mean()), "p99_abs": float(np.quantile(np.abs(e), 0.99)),
            "rmse_without_worst_1pct": rms(np.sort(np.abs(e))[:int(0.99 * e.size)]),
            "fast_rows": float(fast.mean()), "fast_bias": float(e[fast].mean()) if fast.any() else None,
            "fast_rmse": rms(e[fast]), "rmse_after_step_0": rms(e[pos > 0])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=SYNTHETIC_NPZ")
    p.add_argument("--env", required=True, help="env family: hopper, walker2d or halfcheetah")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--fast-reward", type=float, default=3.5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    family = env_family(args.env)
    out = {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        if not path:
            p.error(f"{spec!r}: give NAME=PATH")
        out[name] = reward_errors(family, path, args.n, args.seed, args.fast_reward)
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                for k, v in out[name].items()}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
