"""Ablation: DAWM with a perfect world model on the same synthetic states and actions.

    python benchmarks/oracle_dynamics_ablation.py runs/RUN runs/RUN-oracle
    python benchmarks/oracle_dynamics_ablation.py --terminals-only runs/RUN runs/RUN-oracle-falls
    python -m dawm_fast.train <RUN's own arguments> --out runs/RUN-oracle     # RL on the result

Copies a run whose generation stage has finished, replacing each synthetic transition's next
state, reward and terminal by what the simulator does from its (s, a)
(dawm_fast.evaluation.dynamics_check.simulate); rows whose observation does not pin down the state
(a velocity at the obs clip) are dropped. Re-running the pipeline on the copy with the run's own
arguments trains only the RL stage. An oracle, so a research tool: if DAWM with true dynamics does
no better than plain offline RL, the world model's errors are not what holds DAWM back.
``--terminals-only`` replaces only the terminal flags (the model's s' and r stay; a window's rows
after a simulator fall are dropped): does DAWM lose for the falls its synthetic data leaves out?
An RL run reads the copy as its world model: `python -m dawm_fast.train ... --set
world_model_dir=runs/RUN-oracle-falls` (same world-model settings, so the same fingerprint).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from dawm_fast.data.tasks import env_family
from dawm_fast.evaluation.dynamics_check import pins_down_state, simulate, window_positions

KEPT_STAGES = ("data", "idm", "world_model", "generation")


def make_oracle_run(src: Path, dst: Path, terminals_only: bool = False) -> dict:
    if not (src / "synthetic.npz").exists():
        raise SystemExit(f"{src} has no synthetic.npz: run its pipeline through generation first")
    dst.mkdir(parents=True)
    for name in ("config.json", "idm.pt", "world_model.pt"):
        shutil.copy(src / name, dst / name)
    shutil.copytree(src / "normalizers", dst / "normalizers")
    progress = json.loads((src / "progress.json").read_text())
    progress["done"] = {k: v for k, v in progress["done"].items() if k in KEPT_STAGES}
    (dst / "progress.json").write_text(json.dumps(progress))
    lines = (src / "metrics.csv").read_text().splitlines()
    (dst / "metrics.csv").write_text(
        "\n".join(line for line in lines if line.split(",")[0] in ("stage",) + KEPT_STAGES)
        + "\n")
    family = env_family(json.loads((src / "config.json").read_text())["env"])
    if terminals_only:
        return _oracle_terminals(family, src, dst)
    with np.load(src / "synthetic.npz") as z:
        ok = pins_down_state(family, z["observations"])
        obs, act = z["observations"][ok].astype(np.float64), z["actions"][ok].astype(np.float64)
        model_terminals = float(z["terminals"][ok].mean())
    nxt, rew, term = simulate(family, obs, act)
    np.savez(dst / "synthetic.npz", observations=obs.astype(np.float32),
             actions=act.astype(np.float32), rewards=rew.astype(np.float32),
             next_observations=nxt.astype(np.float32), terminals=term.astype(np.float32))
    return {"kept": int(ok.sum()), "of": int(len(ok)), "terminal_fraction": float(term.mean()),
            "model_terminal_fraction": model_terminals}


def _oracle_terminals(family, src: Path, dst: Path) -> dict:
    """The model's s' and r, the simulator's terminal flag (rows whose state the observation does
    not pin down keep the model's); a window's rows after a simulator fall are dropped."""
    z = dict(np.load(src / "synthetic.npz"))
    ok = pins_down_state(family, z["observations"])
    _, _, sim = simulate(family, z["observations"][ok], z["actions"][ok])
    term = z["terminals"] > 0.5
    model_terminals = float(term.mean())
    term[ok] = sim
    # drop what follows a terminal inside its window (generation writes windows in order)
    pos = window_positions(z["observations"], z["next_observations"])
    window = np.cumsum(pos == 0)
    # a row is kept iff no earlier row of its window is terminal
    earlier = np.cumsum(term) - term                       # terminals before each row, overall
    at_start = earlier[pos == 0]                           # ... before each window's first row
    keep = earlier - at_start[window - 1] == 0
    z["terminals"] = term.astype(np.float32)
    np.savez(dst / "synthetic.npz", **{k: v[keep] for k, v in z.items()})
    return {"kept": int(keep.sum()), "of": int(len(keep)),
            "terminal_fraction": float(term[keep].mean()),
            "model_terminal_fraction": model_terminals}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="a pipeline run directory after generation")
    p.add_argument("dst", type=Path, help="the new run directory (must not exist)")
    p.add_argument("--terminals-only", action="store_true",
                   help="keep the model's next states and rewards; take only the terminal flags "
                        "from the simulator (and drop a window's rows after a fall)")
    a = p.parse_args(argv)
    info = make_oracle_run(a.src, a.dst, a.terminals_only)
    print(f"kept {info['kept']:,} of {info['of']:,} synthetic transitions; terminal fraction "
          f"{info['terminal_fraction']:.5f} (the model's: {info['model_terminal_fraction']:.5f})")


if __name__ == "__main__":
    main()
