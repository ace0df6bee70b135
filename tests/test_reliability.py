"""What a run directory guarantees (#19): one owner, no NaN reaches a saved product, every file a
resume reads is checked (a failure is one line naming it, and deleting it redoes its stage),
SIGTERM stops like Ctrl-C, and a resume on other data is refused.

One finished smoke run is built per module; each case works on a copy and reruns only what it
needs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dawm_fast import pipeline as pipeline_mod
from dawm_fast import train
from dawm_fast.data import embedded
from dawm_fast.data.tasks import env_family
from dawm_fast.run_lock import BUSY_EXIT_CODE, run_dir_lock

ARGS = ["--env", "walker2d-medium-expert", "--preset", "smoke", "--device", "cpu"]
FINAL = ("final_score_mean", "final_return_mean", "synthetic_transitions", "one_step_state_mse",
         "idm_heldout_action_mse")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run (embedded walker2d data from random-weight policies)."""
    root = tmp_path_factory.mktemp("reliability")
    with embedded.random_policy_store(root, env_family("walker2d")):
        out = root / "finished"
        assert train.main([*ARGS, "--out", str(out)]) == 0
        yield out


def copy_run(finished, dest):
    shutil.copytree(finished, dest)
    return dest


def forget(out, *stages):
    """Mark `stages` unfinished in progress.json (their products stay)."""
    p = out / "progress.json"
    state = json.loads(p.read_text())
    for s in stages:
        state["done"].pop(s, None)
    p.write_text(json.dumps(state))


def final_numbers(out):
    res = json.loads((out / "results.json").read_text())
    return {k: res[k] for k in FINAL}


def same_agent(a, b):
    sa = torch.load(a / "agent.pt", weights_only=False)["agent"]
    sb = torch.load(b / "agent.pt", weights_only=False)["agent"]
    return all(torch.equal(v, sb[net][k]) for net in ("actor", "critic")
               for k, v in sa[net].items())


def rerun(out, capsys, *extra):
    """(exit code, stderr) of the CLI on `out`, in this process."""
    capsys.readouterr()
    try:
        code = train.main([*ARGS, "--out", str(out), *extra])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# -- every file checked --------------------------------------------------------------------------
RUN_FILES = (".lock", "agent.pt", "config.json", "dynamics_check.json", "idm.pt", "metrics.csv",
             "normalizers/states.npz", "normalizers/rewards.npz", "plots/learning_curve.png",
             "progress.json", "results.json", "rl_ckpt.pt", "synthetic.npz", "world_model.pt",
             "world_model_ckpt.pt")


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("name", RUN_FILES)
def test_a_damaged_file_gives_the_same_numbers_or_one_line_naming_it(finished, tmp_path, capsys,
                                                                     monkeypatch, name, damage):
    if name not in ("synthetic.npz", "metrics.csv") and not name.startswith("plots/"):
        import dawm_fast.plots    # the plots read only those files, and take most of a rerun
        monkeypatch.setattr(dawm_fast.plots, "write_plots", lambda *a, **kw: [])
    out = copy_run(finished, tmp_path / "run")
    path = out / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    code, err = rerun(out, capsys)
    if code == 0:
        # Read only where needed: a finished run does not read its agent again.
        assert final_numbers(out) == final_numbers(finished)
        assert name == "agent.pt" or same_agent(out, finished)
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0], lines[0]
    if "delete that file" in lines[0]:          # the advice works: the same numbers after it
        path.unlink()
        assert rerun(out, capsys) == (0, "")
        assert final_numbers(out) == final_numbers(finished) and same_agent(out, finished)


def test_deleting_a_product_redoes_its_stage_and_the_later_ones(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    (out / "world_model.pt").unlink()
    capsys.readouterr()
    assert train.main([*ARGS, "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "world_model.pt is missing: redoing world_model, generation, rl, evaluation" in log
    assert "[idm] finished earlier" in log
    done = json.loads((out / "progress.json").read_text())["done"]
    assert set(done) == set(pipeline_mod.STAGES)
    assert final_numbers(out) == final_numbers(finished) and same_agent(out, finished)
    # no metric logged twice for one step after the redo
    keys = [tuple(r.split(",")[i] for i in (0, 1, 3))
            for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys))


def test_metrics_cut_mid_line_is_repaired(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    text = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(text + "rl,700,1.0,critic_lo")     # a write cut short
    assert rerun(out, capsys)[0] == 0
    assert (out / "metrics.csv").read_text() == text


# -- data fingerprint ----------------------------------------------------------------------------
def test_resuming_on_other_data_is_refused_and_old_runs_record_theirs(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    state = json.loads((out / "progress.json").read_text())
    assert state["identity"]["data"]["transitions"] > 0
    # a run saved before fingerprints existed: recorded now, not refused
    del state["identity"]["data"]
    (out / "progress.json").write_text(json.dumps(state))
    assert rerun(out, capsys) == (0, "")
    state = json.loads((out / "progress.json").read_text())
    assert "data" in state["identity"]
    # other data than the run started on
    state["identity"]["data"]["transitions"] += 1
    (out / "progress.json").write_text(json.dumps(state))
    code, err = rerun(out, capsys)
    assert code == 2 and "was started on other data (transitions" in err
    assert len(err.strip().splitlines()) == 1


def test_a_changed_d4rl_file_is_named(tmp_path):
    import h5py

    from dawm_fast.data import load_dataset
    from dawm_fast.data.fingerprint import data_fingerprint, fingerprint_difference
    path = tmp_path / "d.hdf5"

    def write(n):
        rng = np.random.default_rng(n)
        with h5py.File(path, "w") as f:
            f["observations"] = rng.normal(size=(n, 11)).astype(np.float32)
            f["actions"] = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
            f["rewards"], f["terminals"] = rng.normal(size=n), np.zeros(n, bool)
    write(100)
    ds = load_dataset("hopper-medium", source="d4rl", path=str(path))
    fp = data_fingerprint(ds, str(path))
    os.utime(path, ns=(0, 0))                        # touched, same content: the same data
    assert fingerprint_difference(fp, data_fingerprint(ds, str(path), known=fp)) is None
    write(120)
    ds2 = load_dataset("hopper-medium", source="d4rl", path=str(path))
    why = fingerprint_difference(fp, data_fingerprint(ds2, str(path), known=fp))
    assert "file content differs" in why and "file size" in why


# -- no NaN policy -------------------------------------------------------------------------------
def nan_case(finished, tmp_path, capsys, monkeypatch, delete, patch=None, extra=()):
    out = copy_run(finished, tmp_path / "run")
    for name in delete:
        (out / name).unlink()
    if extra:                    # the settings under test, as this run's own
        cfg = train.build_config(train.parse_args([*ARGS, *extra]))
        (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    if patch is not None:
        monkeypatch.setattr(*patch)
    code, err = rerun(out, capsys, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return out, err


def test_nan_in_idm_stops_the_stage(finished, tmp_path, capsys, monkeypatch):
    real = pipeline_mod.train_inverse_dynamics

    def nan_idm(*a, **kw):
        idm, report = real(*a, **kw)
        with torch.no_grad():
            next(idm.parameters()).fill_(float("nan"))
        return idm, report
    out, err = nan_case(finished, tmp_path, capsys, monkeypatch, ["idm.pt"],
                        (pipeline_mod, "train_inverse_dynamics", nan_idm))
    assert "[idm]" in err and "NaN or inf by step" in err and "--set idm.lr=" in err
    assert not (out / "idm.pt").exists()


def test_absurd_world_model_lr_stops_the_stage(finished, tmp_path, capsys, monkeypatch):
    out, err = nan_case(finished, tmp_path, capsys, monkeypatch,
                        ["world_model.pt", "world_model_ckpt.pt"], extra=["--set", "wm_training.lr=1e12"])
    assert "[world_model]" in err and "by step" in err and "--set wm_training.lr=" in err
    assert not (out / "world_model.pt").exists()
    ck = out / "world_model_ckpt.pt"
    assert not ck.exists() or not pipeline_mod.nonfinite_tensors(
        torch.load(ck, weights_only=False))


def test_nan_synthetic_data_is_not_saved(finished, tmp_path, capsys, monkeypatch):
    real = pipeline_mod.generate_transitions

    def nan_generation(*a, **kw):
        syn = real(*a, **kw)
        syn["next_observations"][0, 0] = np.nan
        return syn
    out, err = nan_case(finished, tmp_path, capsys, monkeypatch, ["synthetic.npz"],
                        (pipeline_mod, "generate_transitions", nan_generation))
    assert "[generation]" in err and "'next_observations'" in err
    assert not (out / "synthetic.npz").exists()


@pytest.mark.parametrize("algo_lrs", [("td3bc", ("actor_lr", "critic_lr"))])
def test_absurd_rl_lr_stops_the_stage_before_a_nan_agent_is_saved(finished, tmp_path, capsys,
                                                                   monkeypatch, algo_lrs):
    algo, lrs = algo_lrs
    extra = [a for lr in lrs for a in ("--set", f"{algo}.{lr}=1e30")]
    out, err = nan_case(finished, tmp_path, capsys, monkeypatch, ["agent.pt", "rl_ckpt.pt"],
                        extra=extra)
    assert "[rl]" in err and "NaN or inf by update" in err and f"--set {algo}.actor_lr=" in err
    assert not (out / "agent.pt").exists() and not (out / "rl_ckpt.pt").exists()


def test_a_nan_agent_file_is_refused_by_the_evaluation(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    ck = torch.load(out / "agent.pt", weights_only=False)
    next(iter(ck["agent"]["actor"].values())).fill_(float("nan"))
    torch.save(ck, out / "agent.pt")
    forget(out, "evaluation")
    code, err = rerun(out, capsys)
    assert code == 2 and str(out / "agent.pt") in err and "NaN or inf in agent.actor" in err


# -- one owner per run directory -----------------------------------------------------------------
HOLD = ("import sys, time; from pathlib import Path; from dawm_fast.run_lock import run_dir_lock\n"
        "with run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)")


def test_a_second_run_on_a_held_out_dir_is_refused_and_a_dead_owners_lock_is_taken(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-m", "dawm_fast.train", *ARGS, "--threads", "1",
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == BUSY_EXIT_CODE == 75, r.stderr
        assert r.stderr.strip() == (f"error: --out {out} is in use by another run (PID "
                                    f"{holder.pid}); wait for it to finish or choose another "
                                    f"--out")
        assert "Traceback" not in r.stdout + r.stderr
        assert [p.name for p in out.iterdir()] == [".lock"]     # nothing written
    finally:
        holder.kill()                                            # dies holding the lock
        holder.wait()
    with run_dir_lock(out):
        assert (out / ".lock").read_text().strip() == str(os.getpid())


# -- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_checkpoints_and_the_resume_matches_an_uninterrupted_run(finished, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "dawm_fast.train", *ARGS, "--threads", "1",
                              "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            if line.startswith("[world_model] temporal U-Net"):
                break
        time.sleep(2.0)                                # some steps past a checkpoint
        # a second run on the same --out meanwhile: refused, naming this one
        code, err = rerun(out, capsys)
        assert code == BUSY_EXIT_CODE and f"(PID {child.pid})" in err
        child.send_signal(signal.SIGTERM)
        rest, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    log = "".join(lines) + rest
    assert child.returncode == 128 + signal.SIGTERM, log
    assert "Traceback" not in log
    assert "interrupted (SIGTERM)" in log and "rerun the same command to resume" in log
    assert (out / "world_model_ckpt.pt").exists() and not (out / "results.json").exists()
    assert rerun(out, capsys)[0] == 0
    assert final_numbers(out) == final_numbers(finished) and same_agent(out, finished)


def test_dynamics_check_tool_names_a_truncated_synthetic_file(finished, tmp_path):
    from dawm_fast.evaluation import dynamics_check
    out = copy_run(finished, tmp_path / "run")
    syn = out / "synthetic.npz"
    syn.write_bytes(syn.read_bytes()[:1000])
    with pytest.raises(SystemExit) as e:
        dynamics_check.main([str(out)])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and str(syn) in msg and len(msg.splitlines()) == 1


def test_ctrl_c_in_rl_checkpoints_that_update_and_resumes_from_it(finished, tmp_path, capsys,
                                                                 monkeypatch):
    """SIGINT is handled as SIGTERM: the loop finishes its update, checkpoints it, stops."""
    from dawm_fast.rl.td3bc import TD3BC
    out = copy_run(finished, tmp_path / "run")
    for name in ("agent.pt", "rl_ckpt.pt"):
        (out / name).unlink()
    forget(out, "rl", "evaluation")
    original, calls = TD3BC.update, {"n": 0}

    def update_then_signal(self, batch):
        calls["n"] += 1
        if calls["n"] == 250:                    # between the checkpoints at 200 and 400
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(TD3BC, "update", update_then_signal)
    code, err = rerun(out, capsys)
    assert code == 128 + signal.SIGINT and "interrupted (SIGINT)" in err
    assert torch.load(out / "rl_ckpt.pt", weights_only=False)["step"] == 250
    monkeypatch.setattr(TD3BC, "update", original)
    assert rerun(out, capsys)[0] == 0
    assert final_numbers(out) == final_numbers(finished) and same_agent(out, finished)


def test_a_missing_checkpoint_is_named_as_missing_not_corrupt(tmp_path):
    from dawm_fast.run_io import RunError, load_checkpoint

    with pytest.raises(RunError, match=r"agent\.pt \(stage 'rl'\) is missing: that stage has not "
                                       r"finished") as e:
        load_checkpoint(tmp_path / "agent.pt", "rl", ("agent",))
    assert "corrupt" not in str(e.value) and "\n" not in str(e.value)
