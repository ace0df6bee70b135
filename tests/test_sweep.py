"""`python -m dawm_fast.sweep` on a smoke grid (2 tasks x 2 algos x 2 arms x 1 seed): local
workers with a kill in the middle and a resume, a local Ray, the shared world models, and bad
input. The runs are real `dawm_fast.train` processes on tiny step counts."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dawm_fast import sweep
from dawm_fast.data import embedded, load_dataset
from dawm_fast.data.tasks import env_family

TASKS = ("walker2d-medium-expert", "walker2d-medium-replay")
# every stage runs, on step counts that take seconds
TINY = [f"--set={kv}" for kv in (
    "rl_steps=60", "eval_every=20", "rl_checkpoint_every=20", "wm_training.steps=20",
    "wm_training.checkpoint_every=10", "idm.n_steps=20", "n_synthetic_starts=64",
    "eval_episodes=1", "final_eval_episodes=1")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Small random-policy walker2d datasets in a private Minari store that subprocesses see."""
    root = tmp_path_factory.mktemp("sweep_store")
    with embedded.random_policy_store(root, env_family("walker2d")):
        for task in TASKS:
            load_dataset(task)
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    yield root / "minari"
    if saved is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = saved


def grid_args(out, *extra):
    return ["--envs", ",".join(TASKS), "--algos", "td3bc,iql", "--arms", "dawm,plain",
            "--seeds", "0", "--preset", "smoke", "--device", "cpu", "--out", str(out), *TINY,
            *extra]


def finished_runs(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in out.glob("rl/*/results.json")}


def check_finished_grid(out: Path) -> None:
    """Every run finished; 2 world models; the DAWM runs of a task read one synthetic file; plain
    runs never made a world model; the report's numbers are the results files' numbers."""
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("rl/*/results.json")}
    assert len(runs) == 8
    wm_dirs = sorted(p.name for p in (out / "wm").iterdir())
    assert len(wm_dirs) == 2 and all((out / "wm" / d / "synthetic.npz").exists() for d in wm_dirs)
    for task in TASKS:
        dawm = [r for r in runs.values() if r["env"] == task and r["synthetic_ratio"] > 0]
        assert len(dawm) == 2 and len({r["world_model_dir"] for r in dawm}) == 1
        assert dawm[0]["world_model_dir"].startswith(f"wm/{task}_seed0_")
        assert {r["algo"] for r in dawm} == {"td3bc", "iql"}
        assert dawm[0]["synthetic_transitions"] > 0
    for name, r in runs.items():
        run = out / "rl" / name
        assert not (run / "synthetic.npz").exists() and not (run / "world_model.pt").exists()
        if r["synthetic_ratio"] == 0:
            assert r["world_model_dir"] is None and r["synthetic_transitions"] == 0
            done = json.loads((run / "progress.json").read_text())["done"]
            assert done["world_model"].get("skipped") == "synthetic_ratio 0"
    # the report against the results files
    assert subprocess.run([sys.executable, "-m", "dawm_fast.report", str(out), "--reps", "200"],
                          capture_output=True, text=True).returncode == 0
    rep = json.loads((out / "report.json").read_text())
    for cell in rep["cells"]:
        (r,) = [r for r in runs.values() if r["env"] == cell["task"] and r["algo"] == cell["algo"]
                and (r["synthetic_ratio"] > 0) == (cell["arm"] == "dawm")]
        assert cell["final_mean"] == pytest.approx(r["final_score_mean"]) and not cell["refused"]
    for pair in rep["pairs"]:
        d, p = (next(r for r in runs.values() if r["env"] == pair["task"] and
                     r["algo"] == pair["algo"] and (r["synthetic_ratio"] > 0) == want)
                for want in (True, False))
        assert pair["final"]["mean"] == pytest.approx(d["final_score_mean"] - p["final_score_mean"])


def test_local_sweep_survives_a_kill_and_resumes(store, tmp_path, capsys):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dawm_fast.sweep", *grid_args(out),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 600
    while len(finished_runs(out)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    # kill -9 the sweep and the runs it started, as a lost machine would
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    proc.kill()
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    before = finished_runs(out)
    assert 3 <= len(before) < 8, "the kill should land in the middle of the grid"
    # a run directory another run owns fails with its error line, and the others carry on
    bad = out / "rl" / "walker2d-medium-replay_iql_plain_seed0"
    if bad.name not in before:
        shutil.rmtree(bad, ignore_errors=True)
        bad.mkdir(parents=True)
        (bad / "notes.txt").write_text("someone else's files")
    assert sweep.main(grid_args(out, "--workers", "2")) == (1 if bad.name not in before else 0)
    log = capsys.readouterr().out
    for name, mtime in before.items():       # nothing finished was redone
        assert finished_runs(out)[name] == mtime and f"done rl/{name}" not in log
    assert "finished earlier" in log
    if bad.name not in before:
        assert f"failed rl/{bad.name}" in log
        assert "holds no dawm_fast run" in log
        assert len(finished_runs(out)) == 7
        shutil.rmtree(bad)
        assert sweep.main(grid_args(out, "--workers", "2")) == 0
    check_finished_grid(out)


def test_ray_sweep_runs_the_grid(store, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray_sweep"
        assert sweep.main(grid_args(out, "--engine", "ray")) == 0
    finally:
        ray.shutdown()
    check_finished_grid(out)


def test_dry_run_bad_input_and_other_settings(store, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    assert sweep.main(grid_args(out, "--dry-run")) == 0
    log = capsys.readouterr().out
    assert "10 jobs (2 world models, 8 RL runs)" in log and not out.exists()
    for bad, msg in ((["--envs", "hopper-nope"], "unknown task 'hopper-nope'"),
                     (["--arms", "dawm,oracle"], "unknown arm 'oracle'"),
                     (["--algos", "cql"], "unknown algo 'cql'"),
                     (["--seeds", ","], "the grid is empty"),
                     (["--seeds", "a-b"], "--seeds"),
                     (["--set", "nosuchfield=1"], "unknown field 'nosuchfield'")):
        with pytest.raises(SystemExit):
            sweep.main(grid_args(out, "--dry-run") + bad)
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    # a sweep directory made with other settings is refused, naming the difference
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"settings": {
        "preset": "cpu", "backend": "reference", "device": "cpu", "overrides": []}}))
    with pytest.raises(SystemExit):
        sweep.main(grid_args(out))
    err = capsys.readouterr().err
    assert "made with other settings" in err and "preset: 'cpu' there vs 'smoke' now" in err
    # an unreadable record: one line naming the file, before the backend is even resolved
    (out / "sweep.json").write_text("{not json")
    with pytest.raises(SystemExit):
        sweep.main(grid_args(out))
    err = capsys.readouterr().err
    assert "sweep.json is unreadable" in err and len(err.strip().splitlines()) == 1, err
    # Ray missing: one line that says how to get it
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit):
        sweep.main(grid_args(tmp_path / "other", "--engine", "ray"))
    assert "pip install -e '.[ray]'" in capsys.readouterr().err


def test_plan_shares_one_world_model_per_task_and_seed():
    from dawm_fast.experiments.grid import SweepSettings, plan
    jobs = plan(list(TASKS), ["td3bc", "iql"], ["dawm", "plain"], [0, 1],
                SweepSettings("smoke", overrides=("synthetic_ratio=0.25",)),
                lambda args: "fp" + args[args.index("--seed") + 1])
    wm = [j for j in jobs if j.kind == "wm"]
    assert len(wm) == 4 and len(jobs) == 4 + 16
    for j in jobs:
        if j.arm == "dawm":
            assert j.depends_on in {w.name for w in wm} and j.depends_on.endswith(f"fp{j.seed}")
            assert jobs.index(j) > jobs.index(next(w for w in wm if w.name == j.depends_on))
        if j.arm == "plain":   # plain overrides any --set ratio, after it
            assert j.args[-2:] == ["--set", "synthetic_ratio=0"] and j.depends_on is None
    assert not any(np.isnan(j.estimated_minutes("smoke")) for j in jobs)
    from dawm_fast.experiments.runner import job_command
    wm_cmd = job_command(wm[0], threads=1, ddp_processes=2)
    assert wm_cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    rl = next(j for j in jobs if j.kind == "rl")
    assert job_command(rl, threads=1, ddp_processes=2)[1:3] == ["-m", "dawm_fast.train"]


def test_eta_sums_each_jobs_expected_minutes_and_learns_from_jobs_that_ended():
    from dawm_fast.experiments.grid import Job, JobOutcome
    from dawm_fast.experiments.local_engine import ETA

    def job(name, kind, algo=None):
        return Job(name=name, kind=kind, task="hopper-medium-replay", seed=0, args=[], algo=algo)

    wm0, wm1 = job("wm/a", "wm"), job("wm/b", "wm")
    td3, iql = job("rl/td3", "rl", "td3bc"), job("rl/iql", "rl", "iql")
    expected = {"wm/a": 40.0, "wm/b": 40.0, "rl/td3": 20.0, "rl/iql": 30.0}
    now = 10_000.0
    eta = ETA(expected, {}, workers=2)
    # wm/b pending (40), rl/iql pending (30), rl/td3 running for 5 of its 20 minutes: 85 / 2
    assert eta.left_s([wm1, iql], {"rl/td3": (td3, None, now - 300)}, now) == 60 * 85 / 2
    # a job that overran its estimate counts as about to end, not as negative time
    assert eta.left_s([], {"rl/td3": (td3, None, now - 3600)}, now) == 0
    # a world model that took 60 minutes here: the next one is expected to as well
    ended = {"wm/a": JobOutcome(wm0, "done", 3600.0), "x": JobOutcome(iql, "skipped")}
    assert ETA(expected, ended, workers=1).left_s([wm1, iql], {}, now) == 60 * (60 + 30)


def test_a_seeded_world_model_is_planned_and_learned_from_as_its_generation_only(tmp_path):
    """A world model seeded by --reuse-world-models has its training stages done: the plan counts
    only what is left of it, and the ETA, when it ends in a couple of minutes, does not conclude
    that a whole world model takes that long."""
    from dawm_fast.experiments.grid import Job, JobOutcome
    from dawm_fast.experiments.local_engine import ETA
    seeded, fresh = (Job(name=f"wm/{n}", kind="wm", task="hopper-medium-replay", seed=k,
                         args=[]) for k, n in enumerate(("seeded", "fresh")))
    (tmp_path / "wm" / "seeded").mkdir(parents=True)
    (tmp_path / "wm" / "seeded" / "progress.json").write_text(json.dumps({"done": {
        "data": {"wall_s": 30.0}, "idm": {"wall_s": 30.0}, "world_model": {"wall_s": 600.0}}}))
    full = fresh.estimated_minutes("cpu")
    minutes = sweep.job_minutes([seeded, fresh], sweep.read_records([seeded, fresh], tmp_path),
                                "cpu")
    assert minutes["wm/fresh"] == full
    assert minutes["wm/seeded"] == max(full - 11.0, 0.1 * full) < full
    # the seeded one ran 1.5x its plan: the fresh one is expected to, too (not at its 1.5x minutes)
    ended = {"wm/seeded": JobOutcome(seeded, "done", 60 * 1.5 * minutes["wm/seeded"])}
    assert abs(ETA(minutes, ended, workers=1).left_s([fresh], {}, 0.0) - 60 * 1.5 * full) < 1e-6
    # one resumed from a mid-training checkpoint ran an unknown part of itself: nothing learned
    ended["wm/seeded"].resumed = True
    assert ETA(minutes, ended, workers=1).left_s([fresh], {}, 0.0) == 60 * full


def test_a_resumed_rl_run_is_planned_as_the_updates_it_has_left(tmp_path):
    """A run stopped at 90k of 100k updates (checkpointed) has a tenth of itself left, not a
    whole run; one that never logged an update is a whole run."""
    from dawm_fast.experiments.grid import Job
    resumed, fresh = (Job(name=f"rl/{n}", kind="rl", task="hopper-medium-replay", seed=0,
                          args=[], algo="iql") for n in ("resumed", "fresh"))
    run = tmp_path / "rl" / "resumed"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rl_steps": 100_000}))
    with open(run / "metrics.csv", "w", newline="") as f:
        f.write("stage,step,wall_s,metric,value\r\n")
        for step in range(1000, 90_001, 1000):
            f.write(f"rl,{step},1.0,critic_loss,0.5\r\n")
        f.write("data,100000,1.0,transitions,100000\r\n")    # another stage's step: ignored
    records = sweep.read_records([resumed, fresh], tmp_path)
    assert abs(records["rl/resumed"].left_fraction - 0.1) < 1e-12
    assert records["rl/fresh"].left_fraction == 1.0 and not records["rl/fresh"].finished
    minutes = sweep.job_minutes([resumed, fresh], records, "cpu")
    full = fresh.estimated_minutes("cpu")
    assert minutes["rl/fresh"] == full and abs(minutes["rl/resumed"] - 0.1 * full) < 1e-9


def test_a_world_model_without_its_synthetic_data_is_not_finished_and_eta_takes_the_median(tmp_path):
    """An exported wm/ dir copied back into a sweep says generation is done but has no
    synthetic.npz: the sweep must rerun it, not skip it and fail the DAWM runs that read it. The
    planned minutes take the median of a kind's finished runs, so one slow copied-in run does not
    skew them."""
    from dawm_fast.experiments.grid import Job
    wm = Job(name="wm/a", kind="wm", task="hopper-medium-replay", seed=0, args=[])
    run = tmp_path / "wm" / "a"
    run.mkdir(parents=True)
    (run / "progress.json").write_text(json.dumps({"done": {"generation": {"wall_s": 600.0}}}))
    assert not wm.finished(tmp_path)
    (run / "synthetic.npz").write_bytes(b"")
    assert wm.finished(tmp_path)
    rl = [Job(name=f"rl/{k}", kind="rl", task="hopper-medium-replay", seed=k, args=[],
              algo="td3bc") for k in range(3)]
    for job, minutes in zip(rl, (15.0, 16.0, 64.0)):
        (tmp_path / job.name).mkdir(parents=True)
        (tmp_path / job.name / "results.json").write_text(
            json.dumps({"wall_time_s": {"rl": 60 * minutes - 30, "evaluation": 30.0}}))
    records = sweep.read_records([wm, *rl], tmp_path)
    assert sweep.measured_minutes([wm, *rl], records) == {"wm": 10.0, "td3bc": 16.0}


def test_a_sweep_over_generation_settings_trains_each_world_model_once(store, tmp_path, capsys):
    """Sweep B differs from sweep A only in the guidance target's gain: its world-model job starts from
    A's trained IDM and world model (copied, byte for byte) and only generates; a world model
    trained differently is not reused."""
    from dawm_fast.experiments.reuse import reuse_trained_world_models

    def args(out, *extra):
        return ["--envs", TASKS[1], "--algos", "td3bc", "--arms", "dawm", "--seeds", "0",
                "--preset", "smoke", "--device", "cpu", "--out", str(out), *TINY, *extra]

    a, b = tmp_path / "a", tmp_path / "b"
    assert sweep.main(args(a)) == 0
    assert sweep.main(args(b, "--set", "target_gain=1.3", "--reuse-world-models", str(a))) == 0
    assert "IDM and world model from" in capsys.readouterr().out
    (wm_a,), (wm_b,) = ((d / "wm").iterdir() for d in (a, b))
    assert wm_a.name != wm_b.name                       # another fingerprint: another directory
    for name in ("idm.pt", "world_model.pt"):
        assert (wm_a / name).read_bytes() == (wm_b / name).read_bytes()
    done = json.loads((wm_b / "progress.json").read_text())["done"]
    assert done["world_model"]["reused_from"] == str(wm_a) and "generation" in done
    log = (b / "logs" / f"wm__{wm_b.name}.log").read_text()
    assert "[world_model] finished earlier" in log and "own return-to-go x 1.3" in log
    assert not np.array_equal(*(np.load(d / "synthetic.npz")["rewards"][:50]
                                for d in (wm_a, wm_b)))   # generated again, with other targets
    assert (b / "rl" / f"{TASKS[1]}_td3bc_dawm_seed0" / "results.json").exists()
    # a world model trained otherwise is not a source; one that generates otherwise is
    from dawm_fast.experiments.grid import SweepSettings, plan
    settings = json.loads((a / "sweep.json").read_text())["settings"]
    for extra, reused in (("wm_training.steps=30", 0), ("target_gain=1.5", 1)):
        jobs = plan([TASKS[1]], ["td3bc"], ["dawm"], [0], SweepSettings(**{
            **settings, "overrides": (*settings["overrides"], extra)}),
            sweep.world_model_fingerprint_of)
        assert len(reuse_trained_world_models(jobs, tmp_path / extra, [a],
                                              sweep.config_of)) == reused
    with pytest.raises(SystemExit):
        sweep.main(args(tmp_path / "d", "--reuse-world-models", str(tmp_path / "nowhere")))
    assert "has no wm/ directory" in capsys.readouterr().err
