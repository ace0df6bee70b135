"""dawm_fast.behavior.export on small made-up runs: the expert from one run, medium and replay from
the same or another run (--medium-workdir), written in the layout the embedded datasets read."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dawm_fast.behavior.export import evaluate, export
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.data.tasks import env_family

FAM = env_family("hopper")


def make_run(root, logged: dict[int, float], seed: int, **cfg):
    """A run directory with random-weight snapshots and a log claiming the given returns."""
    rng = np.random.default_rng(seed)
    (root / "snapshots").mkdir(parents=True)
    dims = [FAM.obs_dim, 16, 16, FAM.act_dim]
    for step in logged:
        w = {}
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            w[f"W{i}"] = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float16)
            w[f"b{i}"] = np.zeros(b, np.float16)
        w["max_action"] = 1.0
        np.savez(root / "snapshots" / f"actor_{step:07d}.npz", **w)
    with open(root / "log.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["step", "eval_return_mean", "eval_return_std", "wall_s"])
        for step, ret in logged.items():
            out.writerow([step, ret, 0.0, 0])
    (root / "config.json").write_text(json.dumps({"seed": seed, "target_return": 100.0,
                                                  "start_steps": 100, "expl_noise": 0.1, **cfg}))
    return root


def test_export_takes_medium_and_replay_from_another_run(tmp_path):
    expert_run = make_run(tmp_path / "sac", {100: 1.0, 200: 5.0, 300: 9.0}, seed=1, algo="sac")
    rets = [evaluate(NumpyPolicy(dict(np.load(expert_run / "snapshots" / f"actor_{s:07d}.npz"))),
                     FAM.gym_id_v5).mean() for s in (100, 200, 300)]
    # whichever candidate export picks as the expert, one medium snapshot logged 0.4 of its return
    medium_log = {10: 0.4 * rets[0], 20: 0.4 * rets[1], 30: 0.4 * rets[2], 40: 0.0}
    medium_run = make_run(tmp_path / "td3", medium_log, seed=2)
    with pytest.raises(SystemExit, match="--medium-workdir"):
        export("hopper", expert_run, tmp_path / "out_same")
    meta = export("hopper", expert_run, tmp_path / "out", medium_workdir=medium_run)
    assert meta["algorithm"].startswith("SAC") and "--medium-workdir" in meta["command"]
    assert meta["medium_run"] == str(medium_run) and meta["medium_step"] in (10, 20, 30)
    assert 1 / 3 <= medium_log[meta["medium_step"]] / meta["expert_return"] <= 1 / 2
    # these random snapshots: 100 scores best but collapses in some noisy episodes; 200 and 300
    # never do, so one of them is the expert
    assert meta["expert_noisy_episodes"] == 50 and meta["expert_noisy_collapses"] == 0
    assert meta["expert_step"] in (200, 300) and rets[0] > max(rets[1:])
    assert meta["replay"]["snapshot_steps"] == [s for s in (10, 20, 30)
                                                if s <= meta["medium_step"]]
    with np.load(tmp_path / "out" / "hopper.npz") as z:
        medium = NumpyPolicy({k[len("medium/"):]: z[k] for k in z.files
                              if k.startswith("medium/")})
        snap = NumpyPolicy(dict(np.load(medium_run / "snapshots" /
                                        f"actor_{meta['medium_step']:07d}.npz")))
        obs = np.random.default_rng(0).normal(size=(4, FAM.obs_dim))
        np.testing.assert_allclose(medium(obs), snap(obs), rtol=1e-6, atol=1e-6)
        assert {k.split("/")[0] for k in z.files} >= {"expert", "medium", "replay_000"}
