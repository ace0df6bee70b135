"""Bad input at the CLI, run as a user runs it (subprocesses): one line on stderr, no traceback,
nothing written into --out."""
import os
import subprocess
import sys

from pathlib import Path

import h5py
import numpy as np
import pytest

BASE = ["--env", "walker2d-medium", "--preset", "smoke", "--device", "cpu", "--threads", "1"]


def write_d4rl(path, n=200, n_actions=None, n_timeouts=None, nan_obs=False):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 17)).astype(np.float32)
    if nan_obs:
        obs[5, 3] = np.nan
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = rng.uniform(-1, 1, (n if n_actions is None else n_actions, 6))
        f["rewards"] = rng.normal(size=n)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.zeros(n if n_timeouts is None else n_timeouts, bool)
    return path


def cases(tmp):
    a_file = tmp / "a_file"
    a_file.write_text("x")
    d4rl = lambda name, **kw: ["--data-source", "d4rl", "--data-path",
                               str(write_d4rl(tmp / f"{name}.hdf5", **kw))]
    return [
        # (extra args, --out, exit code, text the line must hold)
        ([], a_file, 2, "is a file, not a directory"),
        ([], a_file / "sub", 2, "cannot be created"),
        ([], "/proc/1/dawm_out", 2, "choose a writable place"),
        (["--seed", "-1"], None, 2, "--seed must be an integer in [0, 2147483647], got -1"),
        (["--threads", "0"], None, 2, "--threads must be at least 1, got 0"),
        (["--rl-steps", "-5"], None, 2, "--rl-steps must be at least 1, got -5"),
        (["--target-return", "nan"], None, 2, "--target-return must be a finite number"),
        (["--set", "wm_training.lr=1e999"], None, 2, "--set wm_training.lr=... must be a finite number"),
        (d4rl("short_actions", n_actions=150), None, 2, "'actions' has 150 rows"),
        (d4rl("short_timeouts", n_timeouts=199), None, 2, "'timeouts' has 199 rows"),
        (d4rl("nan_obs", nan_obs=True), None, 2, "'observations' contains NaN"),
    ]


def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path):
    todo = cases(tmp_path)
    procs = []
    for i, (extra, out, _, _) in enumerate(todo):
        out = tmp_path / f"out{i}" if out is None else Path(out)
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "dawm_fast.train", *BASE, "--out", str(out), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})))
    failures = []
    for (extra, _, code, text), (out, p) in zip(todo, procs):
        stdout, stderr = p.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        ok = (p.returncode == code and "Traceback" not in stderr + stdout and len(lines) == 1
              and text in lines[0] and lines[0].startswith("error: "))
        # refused before the run: nothing written (data errors come after the lock is taken,
        # so only the lock file and what the run had written by then may be there)
        if ok and "--data-source" not in extra and out.name.startswith("out"):
            ok = not out.exists()
        if not ok:
            failures.append((extra, p.returncode, stderr[-500:]))
    assert not failures, failures


@pytest.mark.parametrize("extra, message", [
    (["--seed", str(2**40)], "--seed must be an integer in [0, 2147483647]"),
    (["--threads", "-3"], "--threads must be at least 1, got -3"),
    (["--wm-steps", "0"], "--wm-steps must be at least 1, got 0"),
    (["--rl-steps", "0"], "--rl-steps must be at least 1, got 0"),
    (["--synthetic-ratio", "nan"], "--synthetic-ratio must be in [0, 1]"),
    (["--target-return", "inf"], "--target-return must be a finite number"),
    (["--set", "td3bc.actor_lr=0"], "--set td3bc.actor_lr=... must be > 0"),
    (["--set", "gamma=1.5"], "--set gamma=... must be in (0, 1]"),
    (["--set", "iql.batch_size=0"], "--set iql.batch_size=... must be at least 1"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(extra, message, tmp_path,
                                                                     capsys):
    """The same rules in-process, over more fields (cheap: no interpreter start)."""
    from dawm_fast import train
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main([*BASE, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_every_preset_passes_its_own_checks():
    from dawm_fast.config import ALGOS, PRESETS, config_problems, preset_config
    for preset in PRESETS:
        for algo in ALGOS:
            assert config_problems(preset_config(preset, "hopper-medium-expert", algo)) == []


def test_unwritable_out_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = subprocess.run([sys.executable, "-m", "dawm_fast.train", *BASE, "--out",
                        str(locked / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "choose a writable place" in r.stderr
