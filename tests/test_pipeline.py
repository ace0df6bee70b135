"""The whole pipeline on the smoke preset: every stage, resume, results, and bad input."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from dawm_fast import train
from dawm_fast.data import Normalizer, embedded
from dawm_fast.rl.td3bc import TD3BC

from dawm_fast.data.tasks import env_family


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """Small embedded walker2d datasets from random-weight policies, in a private Minari store."""
    with embedded.random_policy_store(tmp_path_factory.mktemp("pipeline"),
                                      env_family("walker2d")) as root:
        yield root


def run(out, *extra):
    return train.main(["--env", "walker2d-medium-expert", "--preset", "smoke", "--out", str(out),
                       "--device", "cpu", *extra])


def test_smoke_run_writes_results(smoke_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "--algo", "iql") == 0
    log = capsys.readouterr().out
    assert "preset smoke" in log and "device cpu" in log and "data source auto" in log
    res = json.loads((out / "results.json").read_text())
    for key in ("env", "algo", "seed", "preset", "backend", "dataset_source", "final_score_mean",
                "final_score_std", "action_consistency_mse", "wall_time_s", "score_reference"):
        assert key in res
    assert res["algo"] == "iql" and "embedded" in res["dataset_source"]
    assert np.isfinite(res["final_score_mean"]) and res["synthetic_transitions"] > 0
    assert 0 < res["one_step_state_mse"] < 4 and 0 < res["copy_state_mse"] < 4
    # the default scaling: standardized states, no x0 clip, so nothing sits at a clip bound
    assert Normalizer.load(out / "normalizers" / "states.npz").kind == "gaussian"
    assert res["synthetic_clipped_fraction"] == 0
    # synthetic falls: the health check's, and the fall classifier's on top (default)
    assert res["falls_marked_by_health_check"] >= 0 and res["falls_added_by_classifier"] >= 0
    assert "synthetic falls: the health check marked" in log
    assert "world-model check: one-step state MSE" in log
    # the simulator replay of synthetic transitions (a diagnostic): real data replays exactly
    assert "simulator replay (diagnostic, not used for training)" in log
    assert res["replay_state_error"] > 0 and res["replay_still_error"] > 0
    replay = json.loads((out / "dynamics_check.json").read_text())
    assert replay["real_floor"]["state_error"] < 1e-10 and replay["env"] == "Walker2d-v5"
    assert set(res["wall_time_s"]) == {"data", "idm", "world_model", "generation", "rl",
                                       "evaluation"}
    for png in ("learning_curve.png", "world_model_loss.png", "real_vs_synthetic.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    stages = {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]}
    assert {"idm", "world_model", "generation", "rl", "evaluation"} <= stages
    # a second run of the same command finds everything finished
    assert run(out, "--algo", "iql") == 0
    assert "finished earlier" in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_agent(smoke_data, tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run(full, "--synthetic-ratio", "0.5") == 0
    calls = {"n": 0}
    original = TD3BC.update

    def update_then_interrupt(self, batch):
        calls["n"] += 1
        if calls["n"] == 450:            # after the checkpoint at update 400
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(TD3BC, "update", update_then_interrupt)
    assert run(cut, "--synthetic-ratio", "0.5") == 130
    assert not (cut / "results.json").exists()
    monkeypatch.setattr(TD3BC, "update", original)
    assert run(cut, "--synthetic-ratio", "0.5") == 0
    log = capsys.readouterr().out
    assert "resumed at update 400" in log
    for stage in ("idm", "world_model", "generation"):
        assert f"[{stage}] finished earlier" in log
    a = torch.load(full / "agent.pt", weights_only=False)["agent"]
    b = torch.load(cut / "agent.pt", weights_only=False)["agent"]
    for k in ("actor", "critic", "actor_target", "critic_target"):
        for key, val in a[k].items():
            assert torch.equal(val, b[k][key]), (k, key)
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((cut / "results.json").read_text())
    assert ra["final_return_mean"] == rb["final_return_mean"]


def test_cdf_state_normalizer_runs_with_the_x0_clip(smoke_data, tmp_path):
    """DWM's scaling on request: CDF states, x0 clipped to their [-1, 1] range (the default is
    standardized states without a clip: test_smoke_run_writes_results)."""
    out = tmp_path / "cdf"
    assert run(out, "--state-normalizer", "cdf", "--until", "generation") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["state_normalizer"] == "cdf" and cfg["world_model"]["schedule"]["clip_sample"]
    norm = Normalizer.load(out / "normalizers" / "states.npz")
    assert norm.kind == "cdf"
    with np.load(out / "synthetic.npz") as z:
        assert len(z["rewards"]) > 0
        # clipped to [-1, 1], every generated value lies inside the data's range
        lo, hi = norm.knots[:, 0], norm.knots[:, -1]
        span = hi - lo
        assert (z["next_observations"] >= lo - 1e-4 * span).all()
        assert (z["next_observations"] <= hi + 1e-4 * span).all()
    with pytest.raises(ValueError, match="unknown state normalizer 'minmax'"):
        from dawm_fast.config import preset_config, with_state_normalizer
        with_state_normalizer(preset_config("smoke", "walker2d-medium", "td3bc"), "minmax")


def test_runs_saved_before_an_option_resume_as_they_ran(smoke_data, tmp_path):
    """A run directory from before `state_normalizer` and `real_first_reward` existed (CDF
    states with the x0 clip, generated step-0 rewards) resumes with `--state-normalizer cdf
    --generated-first-reward`, not as a different run."""
    from dawm_fast.config import config_from_dict
    out = tmp_path / "old"
    old_args = ("--state-normalizer", "cdf", "--generated-first-reward")
    assert run(out, *old_args, "--until", "data") == 0
    saved = json.loads((out / "config.json").read_text())
    # as saved before config_version (layout 1) and before these two options existed
    del saved["config_version"], saved["state_normalizer"]
    del saved["sampling"]["real_first_reward"]
    (out / "config.json").write_text(json.dumps(saved))
    old = config_from_dict(saved)
    assert old.state_normalizer == "cdf" and not old.sampling.real_first_reward
    assert run(out, *old_args, "--until", "idm") == 0


def test_bc_real_only_sets_the_real_rows_of_a_batch():
    from dawm_fast.train import build_config, parse_args
    cfg = build_config(parse_args(["--bc-real-only", "--synthetic-ratio", "0.25", "--device",
                                   "cpu"]))
    assert cfg.td3bc.bc_rows == 192 and cfg.td3bc.batch_size == 256
    assert build_config(parse_args(["--device", "cpu"])).td3bc.bc_rows is None


def test_plain_baseline_skips_the_world_model(smoke_data, tmp_path):
    out = tmp_path / "plain"
    assert run(out, "--synthetic-ratio", "0") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["synthetic_transitions"] == 0 and res["synthetic_ratio"] == 0
    assert not (out / "world_model.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["--env", "walker3d-medium"], "valid: hopper-medium, "),
    (["--env", "walker2d-medium", "--algo", "sac"], "unknown --algo 'sac'"),
    (["--env", "walker2d-medium", "--algo", "iql", "--bc-real-only"],
     "--bc-real-only is a TD3+BC option; --algo is iql"),
    (["--env", "walker2d-medium", "--backend", "turbo"], "unknown --backend"),
    (["--env", "walker2d-medium", "--device", "cuda"], "use --device cpu"),
    (["--env", "walker2d-medium", "--synthetic-ratio", "1.5"], "must be in [0, 1]"),
    (["--env", "walker2d-medium", "--set", "target_mode=best"],
     "target_mode=... must be one of fixed, own"),
    (["--env", "walker2d-medium", "--set", "target_gain=0"], "target_gain=... must be > 0"),
    (["--env", "walker2d-medium", "--set", "target_return=0.5"],
     "is one fixed target for every start; it needs target_mode=fixed"),
])
def test_bad_arguments_say_what_to_do(args, message, capsys, tmp_path):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_out_dir_of_another_run_is_left_alone(smoke_data, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"env": "hopper-medium", "algo": "iql"}))
    before = (out / "config.json").read_text()
    with pytest.raises(SystemExit):
        run(out)
    assert "holds another run" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        run(stranger)
    assert "holds no dawm_fast run" in capsys.readouterr().err


def test_corrupt_checkpoint_is_reported_not_overwritten(smoke_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "corrupt"
    calls = {"n": 0}
    original = TD3BC.update

    def interrupt(self, batch):
        calls["n"] += 1
        if calls["n"] == 250:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(TD3BC, "update", interrupt)
    assert run(out) == 130
    monkeypatch.setattr(TD3BC, "update", original)
    ckpt = out / "rl_ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    garbage = ckpt.read_bytes()
    with pytest.raises(SystemExit):
        run(out)
    err = capsys.readouterr().err
    assert "rl_ckpt.pt" in err and "corrupt" in err and "Traceback" not in err
    assert ckpt.read_bytes() == garbage


def test_fast_backend_smoke_matches_reference_samples(smoke_data, tmp_path):
    """--backend fast runs the whole smoke pipeline; its synthetic data equals the reference
    backend's for the same seed (same world model, same noise) within float tolerance."""
    fast, ref = tmp_path / "fast", tmp_path / "ref"
    assert run(fast, "--backend", "fast", "--algo", "iql") == 0
    assert json.loads((fast / "results.json").read_text())["backend"] == "fast"
    assert run(ref, "--backend", "reference", "--algo", "iql", "--until", "generation") == 0
    assert not (ref / "results.json").exists()
    # Compared where the model works, in normalized space: the CDF de-normalization stretches
    # the sparse tails, so float-level differences grow there in raw units; three clipped DDIM
    # steps can grow 1e-6 differences of the fused forward to ~1e-4.
    norm = Normalizer.load(ref / "normalizers" / "states.npz")
    with np.load(fast / "synthetic.npz") as f, np.load(ref / "synthetic.npz") as r:
        assert f["rewards"].shape == r["rewards"].shape
        for key in ("observations", "next_observations"):
            np.testing.assert_allclose(norm.normalize(f[key]), norm.normalize(r[key]),
                                       atol=1e-3, err_msg=key)
        for key in ("actions", "rewards", "terminals"):
            np.testing.assert_allclose(f[key], r[key], rtol=1e-3, atol=1e-3, err_msg=key)


def test_own_return_targets_guide_each_start_toward_its_own_return(smoke_data, tmp_path, capsys):
    """target_mode=own: each start's g is the return-to-go the world model saw beside that start
    in training (make_windows), times target_gain; it names another world model than a fixed
    target does, and fixed targets keep the names they had."""
    from dawm_fast.config import config_from_dict, world_model_fingerprint
    from dawm_fast.data import make_windows
    from dawm_fast.pipeline import Pipeline

    out = tmp_path / "own"
    assert run(out, "--set", "target_mode=own", "--set", "target_gain=1.3",
               "--until", "generation") == 0
    assert "each start's own return-to-go x 1.3" in capsys.readouterr().out
    done = json.loads((out / "progress.json").read_text())["done"]
    assert done["generation"]["target_return_mean"] > 0
    cfg = config_from_dict(json.loads((out / "config.json").read_text()))
    shutil.copytree(out / "normalizers", tmp_path / "inspect" / "normalizers")
    pipe = Pipeline(cfg, tmp_path / "inspect")      # read-only look at the run's data
    pipe.stage_data()
    w = make_windows(pipe.dataset, cfg.world_model.horizon, cfg.gamma, pipe.family.rtg_scale)
    rows = np.random.default_rng(0).choice(w.start_index, 50, replace=False)
    in_windows = w.returns_to_go[np.searchsorted(w.start_index, rows)]
    np.testing.assert_allclose(pipe.guidance_targets(rows), 1.3 * in_windows, rtol=1e-5)
    fixed = dataclasses.replace(cfg, target_mode="fixed", target_gain=1.0)
    assert len({world_model_fingerprint(c) for c in
                (cfg, fixed, dataclasses.replace(cfg, target_gain=1.0))}) == 3
    assert world_model_fingerprint(dataclasses.replace(fixed, target_gain=2.0)) == \
        world_model_fingerprint(fixed)      # the gain only scales "own" targets
    # --target-return is one fixed target for every start
    flag = train.build_config(train.parse_args(["--env", "walker2d-medium", "--target-return",
                                                "0.5"]))
    assert (flag.target_mode, flag.resolved_target_return()) == ("fixed", 0.5)
