"""`dawm_fast.report` on made-up run directories: its numbers against hand computations, mixed
settings refused, and bad input."""
import csv
import json

import numpy as np
import pytest

from dawm_fast import report as report_cli
from dawm_fast.experiments.report import ReportError, make_report, write_report


def fake_run(root, task, algo, arm, seed, final, evals, config_extra=None, version="0.1.0",
             results_extra=None):
    """arm: plain, dawm (IDM labels) or dawm-bc / dawm-random (the action-label ablation)."""
    run = root / "rl" / f"{task}_{algo}_{arm}_seed{seed}"
    run.mkdir(parents=True)
    synthetic = arm.startswith("dawm")
    ratio = 0.5 if synthetic else 0.0
    config = {"env": task, "algo": algo, "seed": seed, "preset": "cpu", "synthetic_ratio": ratio,
              "world_model_dir": f"wm/{task}_seed{seed}" if synthetic else None,
              "synthetic_actions": arm.removeprefix("dawm-") if "-" in arm else "idm",
              "rl_steps": 100, **(config_extra or {})}
    (run / "results.json").write_text(json.dumps({
        "env": task, "algo": algo, "seed": seed, "synthetic_ratio": ratio, "preset": "cpu",
        "backend": "reference", "final_score_mean": final, "dataset_source": "embedded (test)",
        "eval_env": "Hopper-v5", "score_reference": "D4RL (test)", "config": config,
        "code": {"version": version, "git_commit": "abc"}, **(results_extra or {})}))
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("stage", "step", "wall_s", "metric", "value"))
        for i, v in enumerate(evals):
            w.writerow(("rl", (i + 1) * 20, 1.0, "eval_score", v))
            w.writerow(("rl", (i + 1) * 20, 1.0, "critic_loss", 99.0))   # not an evaluation
    return run


def grid(root, scores):
    """scores[(task, algo, arm)] = list over seeds of (final, evals)."""
    for (task, algo, arm), per_seed in scores.items():
        for seed, (final, evals) in enumerate(per_seed):
            fake_run(root, task, algo, arm, seed, final, evals)


def test_report_numbers_match_a_hand_computation(tmp_path, rng):
    scores = {}
    for task in ("hopper-medium-replay", "walker2d-medium-replay"):
        for arm in ("dawm", "plain"):
            scores[(task, "td3bc", arm)] = [
                (float(rng.uniform(0, 100)), list(rng.uniform(0, 100, 5))) for _ in range(3)]
    grid(tmp_path, scores)
    rep = write_report(tmp_path, reps=2000)
    assert rep["n_runs"] == 12 and len(rep["cells"]) == 4
    for cell in rep["cells"]:
        runs = scores[(cell["task"], cell["algo"], cell["arm"])]
        finals = [f for f, _ in runs]
        last3 = [np.mean(e[-3:]) for _, e in runs]
        assert cell["final_mean"] == pytest.approx(np.mean(finals))
        assert cell["final_std"] == pytest.approx(np.std(finals, ddof=1))
        assert cell["last3_mean"] == pytest.approx(np.mean(last3))
        assert cell["last3_std"] == pytest.approx(np.std(last3, ddof=1))
        assert cell["n_seeds"] == 3 and cell["dataset_source"] == "embedded (test)"
    for pair in rep["pairs"]:
        d = [scores[(pair["task"], "td3bc", "dawm")][s][0] - scores[(pair["task"], "td3bc",
                                                                        "plain")][s][0]
             for s in range(3)]
        assert pair["final"]["mean"] == pytest.approx(np.mean(d))
        assert min(d) - 1e-9 <= pair["final"]["ci_low"] <= np.mean(d) <= pair["final"]["ci_high"] \
            <= max(d) + 1e-9
    (agg_final,) = [a for a in rep["aggregates"] if a["metric"] == "final"]
    pooled = [scores[(t, "td3bc", "dawm")][s][0] for t in ("hopper-medium-replay",
                                                            "walker2d-medium-replay")
              for s in range(3)]
    x = np.sort(pooled)
    assert agg_final["dawm_iqm"] == pytest.approx(x[1:5].mean())    # int(0.25*6)=1 cut per end
    assert 0 <= agg_final["prob_improvement"] <= 1
    md = (tmp_path / "report.md").read_text()
    assert "hopper-medium-replay" in md and "DAWM − plain" in md and "IQM" in md
    assert "embedded (test)" in md and "D4RL (test)" in md
    assert (tmp_path / "plots" / "aggregates.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "curves_hopper-medium-replay.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["n_runs"] == 12


def test_cells_mixing_settings_or_code_versions_are_refused(tmp_path):
    fake_run(tmp_path, "hopper-medium", "iql", "plain", 0, 50.0, [50, 50, 50])
    fake_run(tmp_path, "hopper-medium", "iql", "plain", 1, 60.0, [60, 60, 60],
             config_extra={"rl_steps": 200})
    fake_run(tmp_path, "hopper-medium", "td3bc", "plain", 0, 50.0, [50, 50, 50])
    fake_run(tmp_path, "hopper-medium", "td3bc", "plain", 1, 60.0, [60, 60, 60], version="0.2.0")
    fake_run(tmp_path, "walker2d-medium", "td3bc", "plain", 0, 70.0, [70, 70, 70])
    rep = make_report(tmp_path, reps=100)
    refused = {(c["task"], c["algo"]): c["refused"] for c in rep["cells"]}
    assert "rl_steps: 100 vs 200" in refused[("hopper-medium", "iql")][0]
    assert "code_version" in refused[("hopper-medium", "td3bc")][0]
    assert refused[("walker2d-medium", "td3bc")] == []
    md = write_report(tmp_path, reps=100) and (tmp_path / "report.md").read_text()
    assert "Refused cells" in md and "rl_steps: 100 vs 200" in md


def test_pairs_that_differ_beyond_the_synthetic_data_are_not_compared(tmp_path):
    fake_run(tmp_path, "hopper-medium", "td3bc", "dawm", 0, 50.0, [50, 50, 50])
    fake_run(tmp_path, "hopper-medium", "td3bc", "plain", 0, 60.0, [60, 60, 60],
             config_extra={"rl_steps": 200})
    (pair,) = make_report(tmp_path, reps=100)["pairs"]
    assert "rl_steps" in pair["refused"] and "final" not in pair


def test_a_plain_run_pairs_whatever_its_world_model_settings(tmp_path):
    # a plain run reads no world model: its config's world-model settings (an older layout's
    # windows, another sampling temperature) do not keep it from pairing with a DAWM run
    fake_run(tmp_path, "hopper-medium", "td3bc", "dawm", 0, 50.0, [50, 50, 50],
             config_extra={"config_version": 3})
    fake_run(tmp_path, "hopper-medium", "td3bc", "plain", 0, 60.0, [60, 60, 60],
             config_extra={"config_version": 2, "sampling": {"temperature": 0.9}})
    # nor from sharing a cell with a plain run of another layout
    fake_run(tmp_path, "hopper-medium", "td3bc", "plain", 1, 60.0, [60, 60, 60],
             config_extra={"config_version": 3})
    fake_run(tmp_path, "hopper-medium", "td3bc", "dawm", 1, 50.0, [50, 50, 50],
             config_extra={"config_version": 3})
    rep = make_report(tmp_path, reps=100)
    assert [c["refused"] for c in rep["cells"]] == [[], []]
    (pair,) = rep["pairs"]
    assert "refused" not in pair and pair["final"]["mean"] == -10.0 and pair["seeds"] == [0, 1]
    # a DAWM cell whose world models differ is still refused
    fake_run(tmp_path, "hopper-medium", "td3bc", "dawm", 2, 50.0, [50, 50, 50],
             config_extra={"config_version": 2})
    dawm = [c for c in make_report(tmp_path, reps=100)["cells"] if c["arm"] == "dawm"][0]
    assert "windows_past_falls" in dawm["refused"][0]


def test_report_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(ReportError, match="no finished run"):
        make_report(tmp_path)
    with pytest.raises(SystemExit):
        report_cli.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no finished run" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        report_cli.main([str(tmp_path / "missing")])
    assert "is not a directory" in capsys.readouterr().err
    bad = tmp_path / "rl" / "x"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("{trunc")
    with pytest.raises(SystemExit):
        report_cli.main([str(tmp_path)])
    assert "results.json is not a readable" in capsys.readouterr().err


def test_export_copies_results_not_checkpoints(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    run = fake_run(sweep_dir, "hopper-medium", "td3bc", "plain", 0, 50.0, [40, 50, 60])
    (run / "agent.pt").write_bytes(b"checkpoint")
    (run / "plots").mkdir()
    (run / "plots" / "learning_curve.png").write_bytes(b"png")
    wm = sweep_dir / "wm" / "hopper-medium_seed0_abc"
    wm.mkdir(parents=True)
    (wm / "synthetic.npz").write_bytes(b"data")
    (wm / "progress.json").write_text(json.dumps({"done": {"generation": {"wall_s": 60.0}}}))
    training = sweep_dir / "wm" / "hopper-medium_seed1_abc"       # not generated yet: left out
    training.mkdir(parents=True)
    (training / "progress.json").write_text(json.dumps({"done": {"idm": {"wall_s": 60.0}}}))
    assert report_cli.main([str(sweep_dir), "--export", str(tmp_path / "out"), "--reps",
                            "100"]) == 0
    out = tmp_path / "out"
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "rl/hopper-medium_td3bc_plain_seed0/results.json" in copied
    assert "rl/hopper-medium_td3bc_plain_seed0/plots/learning_curve.png" in copied
    assert "wm/hopper-medium_seed0_abc/progress.json" in copied and "report.md" in copied
    assert not any(p.endswith((".pt", ".npz")) for p in copied)
    assert not any("seed1_abc" in p for p in copied)
    assert json.loads((out / "report.json").read_text())["cells"][0]["final_mean"] == 50.0


def test_export_path_alias_keeps_machine_paths_out_of_committed_files(tmp_path, capsys):
    """A reused world model's source and a run's world-model directory are machine paths;
    --path-alias rewrites them (and the report's name for its sweep) in what gets committed."""
    sweep_dir = tmp_path / "runs" / "p1"
    run = fake_run(sweep_dir, "hopper-medium", "td3bc", "dawm", 0, 50.0, [40, 50, 60])
    results = json.loads((run / "results.json").read_text())
    results["world_model_dir"] = str(sweep_dir / "wm" / "hopper-medium_seed0_abc")
    (run / "results.json").write_text(json.dumps(results))
    (run / "plots").mkdir()
    png = bytes(range(256))                         # not text: copied byte for byte
    (run / "plots" / "learning_curve.png").write_bytes(png)
    out = tmp_path / "out"
    alias = f"{tmp_path / 'runs'}/=sweeps/"
    assert report_cli.main([str(sweep_dir), "--export", str(out), "--reps", "100",
                            "--path-alias", alias,
                            "--command", f"python -m dawm_fast.sweep --out {sweep_dir}"]) == 0
    exported = out / "rl" / run.name
    assert json.loads((exported / "results.json").read_text())["world_model_dir"] == \
        "sweeps/p1/wm/hopper-medium_seed0_abc"
    assert (exported / "plots" / "learning_curve.png").read_bytes() == png
    assert (exported / "metrics.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    report_md = (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["sweep_dir"] == "sweeps/p1"
    assert "--out sweeps/p1" in report_md
    assert str(tmp_path) not in report_md
    for bad in (["--path-alias", "no-equals-sign"], ["--path-alias", "=x"]):
        with pytest.raises(SystemExit):
            report_cli.main([str(sweep_dir), "--export", str(tmp_path / "o2"), *bad])
        assert "is not OLD=NEW" in capsys.readouterr().err
    with pytest.raises(SystemExit):                 # nothing to rewrite without an export
        report_cli.main([str(sweep_dir), "--path-alias", alias])
    assert "use it with --export" in capsys.readouterr().err


def test_one_report_over_several_sweeps_keeps_little_data_runs_a_task_of_their_own(tmp_path, rng):
    """The lead table of a study spans sweeps (a program each): one report over their
    directories. Runs on a seeded 10% of the episodes are their own task, not more seeds of the
    full one; a run found in two of the directories is refused as a repeated seed."""
    full, little = tmp_path / "p1", tmp_path / "p2"
    scores = {}
    for arm in ("dawm", "plain"):
        scores[arm] = [(float(rng.uniform(0, 100)), list(rng.uniform(0, 100, 4)))
                       for _ in range(3)]
        for seed, (final, evals) in enumerate(scores[arm]):
            fake_run(full, "hopper-medium-replay", "iql", arm, seed, final, evals)
            fake_run(little, "hopper-medium-replay", "iql", arm, seed, final - 5, evals,
                     config_extra={"episode_fraction": 0.1})
    out = tmp_path / "lead"
    with pytest.raises(SystemExit):
        report_cli.main([str(full), str(little)])
    rep = write_report([full, little], reps=500, out=out)
    tasks = {c["task"] for c in rep["cells"]}
    assert tasks == {"hopper-medium-replay", "hopper-medium-replay (10% of episodes)"}
    assert all(not c["refused"] and c["n_seeds"] == 3 for c in rep["cells"])
    (pair,) = [p for p in rep["pairs"] if p["task"] == "hopper-medium-replay"]
    diff = np.mean([d[0] - p[0] for d, p in zip(scores["dawm"], scores["plain"])])
    assert pair["final"]["mean"] == pytest.approx(diff)
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines()
               if line.startswith("| hopper-medium-replay (10% of episodes) | IQL | 3 (0-2) |"))
    plain = [f - 5 for f, _ in scores["plain"]]
    assert f"{np.mean(plain):.1f} ± {np.std(plain, ddof=1):.1f}" in row
    assert f"{diff:+.1f} [" in row
    assert "| IQL | 2 |" in md                       # the across-task row: two tasks
    assert (out / "plots" / "curves_hopper-medium-replay_10_of_episodes.png").exists()
    # the same runs twice: a cell with repeated seeds is refused, not averaged
    rep = make_report([full, full], reps=100)
    assert all("seed repeated" in "; ".join(c["refused"]) for c in rep["cells"])


def test_across_task_statistics_use_the_seeds_both_arms_have(tmp_path):
    """A cell still filling (DAWM has seed 0, plain seeds 0 and 1) enters the IQM and the
    probability of improvement with seed 0 only."""
    fake_run(tmp_path, "hopper-medium-replay", "td3bc", "dawm", 0, 30.0, [30.0])
    fake_run(tmp_path, "hopper-medium-replay", "td3bc", "plain", 0, 20.0, [20.0])
    fake_run(tmp_path, "hopper-medium-replay", "td3bc", "plain", 1, 90.0, [90.0])
    (agg,) = [a for a in make_report(tmp_path, reps=200)["aggregates"] if a["metric"] == "final"]
    assert agg["seeds"] == {"hopper-medium-replay": [0]}
    assert agg["plain_iqm"] == pytest.approx(20.0) and agg["prob_improvement"] == 1.0
    # with --min-seeds 2 the task is still filling: out of the lead table and the aggregates
    assert report_cli.main([str(tmp_path), "--min-seeds", "2", "--reps", "100"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["aggregates"] == [] and len(rep["pairs"]) == 1
    lead = (tmp_path / "report.md").read_text().split("## Per task")[0]
    assert "Still filling" in lead and "| hopper-medium-replay | TD3+BC |" not in lead


def test_world_model_fidelity_sits_beside_the_gain(tmp_path, rng):
    """Per task, the mean over its seeds' world models (one per seed, read by both algos' DAWM
    runs) of the replay errors, beside DAWM − plain; runs without the replay check leave their
    task out."""
    errs = {}
    for seed in range(3):
        state, still = rng.uniform(0.01, 0.1), rng.uniform(0.2, 0.5)
        reward, action = rng.uniform(0.1, 0.3), rng.uniform(0.01, 0.1)
        errs[seed] = (state, still, reward, action)
        for algo, shift in (("td3bc", 2.0), ("iql", -1.0)):
            base = float(rng.uniform(30, 40))
            fake_run(tmp_path, "hopper-medium-replay", algo, "plain", seed, base, [base] * 3)
            run = fake_run(tmp_path, "hopper-medium-replay", algo, "dawm", seed, base + shift,
                           [base] * 3)
            res = json.loads((run / "results.json").read_text())
            res.update(replay_state_error=state, replay_still_error=still,
                       replay_reward_rmse=reward, action_consistency_mse=action)
            (run / "results.json").write_text(json.dumps(res))
        fake_run(tmp_path, "walker2d-medium-replay", "td3bc", "plain", seed, 20.0, [20.0] * 3)
        fake_run(tmp_path, "walker2d-medium-replay", "td3bc", "dawm", seed, 15.0, [15.0] * 3)
    rep = make_report(tmp_path, reps=100)
    (row,) = rep["world_models"]                  # walker2d's runs have no replay check
    assert row["task"] == "hopper-medium-replay" and row["seeds"] == [0, 1, 2]
    assert np.isclose(row["state_error"], np.mean([e[0] for e in errs.values()]))
    assert np.isclose(row["state_error_vs_still"], np.mean([e[0] / e[1] for e in errs.values()]))
    assert np.isclose(row["reward_rmse"], np.mean([e[2] for e in errs.values()]))
    assert np.isclose(row["idm_action_error"], np.mean([e[3] for e in errs.values()]))
    assert np.allclose([row["dawm_minus_plain_final"][a] for a in ("td3bc", "iql")], [2.0, -1.0])
    write_report(tmp_path, reps=100)
    md = (tmp_path / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| hopper-medium-replay | 3 | "))
    assert "DAWM − plain: IQL | DAWM − plain: TD3+BC |" in md   # columns by algo name
    assert line.endswith("| -1.0 | +2.0 |")


def test_a_report_over_committed_reports_quotes_the_commands_that_made_each(tmp_path, rng):
    """The lead table's numbers come from committed reports; the lead report says, per source,
    the commands that made its runs: from report.json, or from report.md's "Made by:" block for
    a report written before report.json kept them; a source without either says so."""
    dirs = {name: tmp_path / name for name in ("p1", "p2", "p3")}
    for i, d in enumerate(dirs.values()):
        for arm in ("dawm", "plain"):
            for seed in range(2):
                fake_run(d, f"task{i}-medium", "iql", arm, seed, float(rng.uniform(0, 100)),
                         list(rng.uniform(0, 100, 3)))
    cmd1 = f"python -m dawm_fast.sweep --envs task0-medium --seeds {rng.integers(1000)}"
    assert report_cli.main([str(dirs["p1"]), "--reps", "100", "--command", cmd1]) == 0
    assert json.loads((dirs["p1"] / "report.json").read_text())["commands"] == [cmd1]
    cmd2 = f"python -m dawm_fast.sweep --envs task1-medium --seeds {rng.integers(1000)}"
    (dirs["p2"] / "report.md").write_text(f"# Sweep report\n\nMade by:\n\n```\n{cmd2}\n```\n\nx\n")
    lead = tmp_path / "lead"
    here = "python -m dawm_fast.report p1 p2 p3 --out lead"
    assert report_cli.main([*(str(d) for d in dirs.values()), "--out", str(lead), "--reps",
                            "100", "--command", here]) == 0
    rep = json.loads((lead / "report.json").read_text())
    assert rep["commands"] == [here]
    assert [s["commands"] for s in rep["sources"]] == [[cmd1], [cmd2], []]
    md = (lead / "report.md").read_text()
    assert md.index(here) < md.index(f"Runs from `{dirs['p1']}`, made by:") < md.index(cmd1) \
        < md.index(f"Runs from `{dirs['p2']}`, made by:") < md.index(cmd2)
    assert f"Runs from `{dirs['p3']}` (no command recorded)" in md


def test_the_action_label_ablation_is_paired_against_the_idms_labels(tmp_path, rng):
    """Program 3 of #18: per labeller its score, its action error, and its score minus the
    IDM's paired over seeds (a hand computation); a labeller's runs that differ from the IDM's in
    more than the labels are refused, not compared."""
    root = tmp_path / "p3"
    task, n_seeds = "hopper-medium-replay", 3
    scores, errors = {}, {}
    for arm in ("plain", "dawm", "dawm-bc", "dawm-random"):
        scores[arm] = rng.uniform(0, 100, n_seeds)
        errors[arm] = rng.uniform(0, 1, n_seeds)
        for seed in range(n_seeds):
            extra = ({"action_consistency_mse": errors[arm][seed], "replay_state_error": 0.01}
                     if arm == "dawm" else {"label_action_mse": errors[arm][seed],
                                            "label_replay_state_error": 0.02})
            fake_run(root, task, "iql", arm, seed, float(scores[arm][seed]),
                     list(rng.uniform(0, 100, 3)), results_extra=extra,
                     config_extra={"rl_steps": 200} if arm == "dawm-random" else None)
    rep = write_report(root, reps=500, out=tmp_path / "out")
    by_arm = {p["arm"]: p for p in rep["label_pairs"]}
    assert set(by_arm) == {"dawm-bc", "dawm-random"}
    assert by_arm["dawm-bc"]["final"]["mean"] == pytest.approx(
        np.mean(scores["dawm-bc"] - scores["dawm"]))
    assert by_arm["dawm-bc"]["seeds"] == [0, 1, 2]
    assert "rl_steps" in by_arm["dawm-random"]["refused"]        # other settings: not compared
    cells = {c["arm"]: c for c in rep["cells"]}
    assert cells["dawm-bc"]["label_action_mse"] == pytest.approx(np.mean(errors["dawm-bc"]))
    assert cells["dawm"]["label_action_mse"] == pytest.approx(np.mean(errors["dawm"]))
    md = (tmp_path / "out" / "report.md").read_text()
    bc_row = next(line for line in md.splitlines() if "| BC policy |" in line)
    d = scores["dawm-bc"] - scores["dawm"]
    assert f"| {np.mean(errors['dawm-bc']):.4f} | 0.0200 | {d.mean():+.1f} [" in bc_row
    random_row = next(line for line in md.splitlines() if "| uniform random |" in line)
    assert "differ in more than who labels the actions" in random_row
    idm_row = next(line for line in md.splitlines() if "| IDM (DAWM) |" in line)
    assert idm_row.count("|") == bc_row.count("|") == 11
