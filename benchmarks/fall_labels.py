"""Which synthetic transitions are falls: the health check and the fall classifier against the
simulator, on the same rows (issue #18; world_model/fall_classifier.py).

    python benchmarks/fall_labels.py WM_RUN_DIR [--n 20000] [--thresholds 0.3,0.5,0.7] [--json out.json]

WM_RUN_DIR is a world-model run directory (synthetic.npz, config.json, normalizers/). The fall
classifier is trained as the RL stage trains it (the run's fall_classifier settings and seed), on
the real data the run trained on. Then `n` synthetic rows whose observation pins down the simulator state
are replayed one step in the simulator (evaluation.dynamics_check.simulate), and for the health
check alone and for health check + classifier at each threshold it prints, per synthetic row:
falls marked, falls missed (the simulator falls, the label does not) and falls made up. Rows are
compared one at a time, before any window is cut after a fall.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def rates(label: np.ndarray, sim: np.ndarray) -> dict:
    return {"falls": float(label.mean()), "missed": float((sim & ~label).mean()),
            "made_up": float((label & ~sim).mean())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--thresholds", default="0.3,0.5,0.7")
    p.add_argument("--seed", type=int, default=11, help="which rows are replayed")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from dawm_fast.config import config_from_dict
    from dawm_fast.data.dataset import run_subset
    from dawm_fast.data.loader import load_dataset
    from dawm_fast.data.normalizers import Normalizer
    from dawm_fast.data.tasks import env_family
    from dawm_fast.evaluation.dynamics_check import pins_down_state, simulate
    from dawm_fast.run_io import load_arrays
    from dawm_fast.world_model.fall_classifier import SEED_OFFSET, train_fall_classifier

    torch.set_num_threads(1)
    cfg = config_from_dict(json.loads((args.run_dir / "config.json").read_text()))
    ds = run_subset(load_dataset(cfg.env, source=cfg.data_source, path=cfg.data_path),
                    cfg.max_transitions, cfg.episode_fraction, cfg.seed)
    norm = Normalizer.load(args.run_dir / "normalizers" / "states.npz").normalize
    syn = load_arrays(args.run_dir / "synthetic.npz", "generation",
                      ("observations", "actions", "terminals"))
    predict, report = train_fall_classifier(norm(ds.observations), ds.actions, ds.terminals,
                                            cfg.fall_classifier, "cpu",
                                            seed=cfg.seed + SEED_OFFSET)
    family = env_family(cfg.env)
    ok = np.flatnonzero(pins_down_state(family, syn["observations"]))
    idx = np.sort(np.random.default_rng(args.seed).choice(ok, min(args.n, len(ok)), replace=False))
    obs, act = syn["observations"][idx], syn["actions"][idx]
    _, _, sim = simulate(family, np.asarray(obs, np.float64), np.asarray(act, np.float64),
                         ds.eval_env_id)
    health = syn["terminals"][idx] > 0.5
    prob = predict(norm(obs), act)
    out = {"run_dir": str(args.run_dir), "data": ds.source, "rows": int(idx.size),
           "simulator_falls": float(sim.mean()), "classifier": report,
           "health_check": rates(health, sim)}
    for t in (float(x) for x in args.thresholds.split(",")):
        out[f"health_or_classifier_{t:g}"] = rates(health | (prob > t), sim)
    print(f"[fall_labels] {cfg.env} seed {cfg.seed}, data: {ds.source}; {idx.size:,} synthetic "
          f"rows replayed; simulator falls {out['simulator_falls']:.2%} of rows")
    print(f"[fall_labels] classifier held-out: {json.dumps(report)}")
    for name, r in out.items():
        if isinstance(r, dict) and "missed" in r:
            print(f"  {name:28s} marked {r['falls']:.2%}  missed {r['missed']:.2%}  "
                  f"made up {r['made_up']:.2%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
