"""A sweep's report from its runs' results.json and metrics.csv files only.

Cells are (task, algo, arm); arm is "plain" for synthetic ratio 0, else "dawm". A cell whose runs
disagree on a setting (preset, backend, any config field but the seed, or the code version) is
refused: left out of every table and statistic, and listed with the difference. A DAWM/plain pair
whose configs differ in more than the synthetic data is not compared.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dawm_fast.config import (SYNTHETIC_DATA_FIELDS, SYNTHETIC_LABEL_FIELDS, dict_differences,
                              normalized_config_dict)
from dawm_fast.experiments import stats
from dawm_fast.run_io import read_metric_rows
from dawm_fast.run_progress import stages_done

ARM_ORDER = ("dawm", "plain", "dawm-bc", "dawm-random")
ARM_COLORS = {"dawm": "tab:blue", "plain": "tab:gray", "dawm-bc": "tab:orange",
              "dawm-random": "tab:red"}
# Config fields that may differ between the seeds of one cell / the two arms of a pair. The arms
# differ in the synthetic data alone, so its settings may differ too; and between the seeds of a
# plain cell: a plain run reads none of them (its world-model settings are whatever its config
# carried, e.g. an older layout's).
PER_RUN_FIELDS = ("seed", "world_model_dir", "device", "progress_every_s")
PAIR_FIELDS = (PER_RUN_FIELDS + ("synthetic_ratio", "synthetic_actions") + SYNTHETIC_DATA_FIELDS
               + SYNTHETIC_LABEL_FIELDS)


class ReportError(ValueError):
    """Nothing to report, or unreadable input: one line that says what to do."""


@dataclass
class Run:
    path: Path
    results: dict
    evals: list[tuple[int, float]]      # (update, eval score) during RL

    @property
    def arm(self) -> str:
        if self.results.get("synthetic_ratio", 0) == 0:
            return "plain"
        source = (self.results.get("config") or {}).get("synthetic_actions", "idm")
        return "dawm" if source == "idm" else f"dawm-{source}"

    @property
    def task(self) -> str:
        """The env, and the part of its data the run trained on when not all of it: a run on a
        seeded 10% of the episodes (#18's little-data program) is another task, not another seed
        of the full one."""
        fraction = float((self.results.get("config") or {}).get("episode_fraction", 1.0))
        env = self.results["env"]
        return env if fraction >= 1.0 else f"{env} ({100 * fraction:g}% of episodes)"

    @property
    def key(self) -> tuple[str, str, str]:
        return self.task, self.results["algo"], self.arm

    @property
    def final(self) -> float:
        return float(self.results["final_score_mean"])

    @property
    def last3(self) -> float:
        """Mean of the last three evaluations during training (less noisy than the final one)."""
        if not self.evals:
            return float("nan")
        return float(np.mean([s for _, s in self.evals[-3:]]))

    def settings(self, ignore=PER_RUN_FIELDS) -> dict:
        """Everything that must agree across the runs of a cell: config (but per-run fields) and
        the code version. Runs from before results.json carried its config give None."""
        cfg = self.results.get("config")
        if cfg is None:
            return {"config": None}
        cfg = {k: v for k, v in normalized_config_dict(cfg).items() if k not in ignore}
        return {"config": cfg, "code_version": (self.results.get("code") or {}).get("version")}

    def describe(self) -> dict:
        r = self.results
        return {k: r.get(k) for k in ("dataset_source", "eval_env", "score_reference", "preset",
                                      "backend")}


def load_runs(root: Path) -> list[Run]:
    runs = []
    for res_path in sorted(root.rglob("results.json")):
        try:
            results = json.loads(res_path.read_text())
            results["final_score_mean"], results["env"], results["algo"]
        except (OSError, ValueError, KeyError) as e:
            raise ReportError(f"{res_path} is not a readable dawm_fast results file "
                              f"({type(e).__name__}); delete it or rerun that run") from None
        runs.append(Run(res_path.parent, results, read_evals(res_path.parent / "metrics.csv")))
    return runs


def read_evals(path: Path) -> list[tuple[int, float]]:
    return sorted((int(r["step"]), float(r["value"])) for r in read_metric_rows(path)
                  if r["stage"] == "rl" and r["metric"] == "eval_score")


def _setting_differences(a: dict, b: dict) -> list[str]:
    """What two runs' settings (Run.settings) disagree on: config fields, read in today's layout,
    and the code version."""
    if a["config"] is None or b["config"] is None:
        return [] if a["config"] is b["config"] else ["config: missing in one run's results"]
    diff = dict_differences(a["config"], b["config"])
    if a["code_version"] != b["code_version"]:
        diff.append(f"code_version: {a['code_version']!r} vs {b['code_version']!r}")
    return diff


@dataclass
class Cell:
    task: str
    algo: str
    arm: str
    runs: list[Run]
    refused: list[str] = field(default_factory=list)   # why, when its runs disagree

    def by_seed(self, metric: str) -> dict[int, float]:
        return {r.results["seed"]: getattr(r, metric) for r in self.runs}

    def label_errors(self) -> dict:
        """How far the arm's action labels are from the real a_t at window starts (the IDM's:
        the generation stage's action consistency), and the simulator replay of its synthetic
        transitions; mean over seeds. None for plain runs."""
        if self.arm == "plain":
            return {"label_action_mse": None, "label_replay_state_error": None}
        keys = (("action_consistency_mse", "replay_state_error") if self.arm == "dawm" else
                ("label_action_mse", "label_replay_state_error"))
        vals = [[r.results.get(k) for r in self.runs] for k in keys]
        mean = lambda v: float(np.mean(v)) if v and None not in v else None
        return {"label_action_mse": mean(vals[0]), "label_replay_state_error": mean(vals[1])}

    def summary(self) -> dict:
        fm, fs = stats.mean_std([r.final for r in self.runs])
        lm, ls = stats.mean_std([r.last3 for r in self.runs])
        first = self.runs[0]
        commits = sorted({str((r.results.get("code") or {}).get("git_commit"))[:10]
                          for r in self.runs})
        return {"task": self.task, "algo": self.algo, "arm": self.arm, "n_seeds": len(self.runs),
                "seeds": sorted(r.results["seed"] for r in self.runs),
                "final_mean": fm, "final_std": fs, "last3_mean": lm, "last3_std": ls,
                "final_by_seed": self.by_seed("final"), "last3_by_seed": self.by_seed("last3"),
                "settings_known": first.results.get("config") is not None,
                **self.label_errors(),
                "git_commits": commits, **first.describe()}


def build_cells(runs: list[Run]) -> list[Cell]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    cells = []
    for (task, algo, arm), members in sorted(groups.items()):
        cell = Cell(task, algo, arm, sorted(members, key=lambda r: r.results["seed"]))
        ignore = PER_RUN_FIELDS + (SYNTHETIC_DATA_FIELDS + SYNTHETIC_LABEL_FIELDS
                                   if arm == "plain" else ())
        ref = cell.runs[0].settings(ignore)
        for other in cell.runs[1:]:
            diff = _setting_differences(ref, other.settings(ignore))
            if diff:
                cell.refused.append(f"{cell.runs[0].path.name} vs {other.path.name}: "
                                    + "; ".join(diff[:4]))
        seeds = [r.results["seed"] for r in cell.runs]
        if len(set(seeds)) != len(seeds):
            cell.refused.append(f"seed repeated: {sorted(seeds)}")
        cells.append(cell)
    return cells


def compare_pairs(cells: list[Cell], reps: int) -> list[dict]:
    """Per task x algo and synthetic arm: arm - plain over the seeds both arms have (final and
    last-3)."""
    ok = {(c.task, c.algo, c.arm): c for c in cells if not c.refused}
    out = []
    for (task, algo, arm), dawm in sorted(ok.items(), key=lambda kv: (
            kv[0][0], kv[0][1], ARM_ORDER.index(kv[0][2]) if kv[0][2] in ARM_ORDER else 9)):
        plain = ok.get((task, algo, "plain"))
        if arm == "plain" or plain is None:
            continue
        out.append(paired_row(dawm, plain, PAIR_FIELDS, reps,
                              "DAWM and plain runs differ in more than the synthetic data"))
    return out


def label_pairs(cells: list[Cell], reps: int) -> list[dict]:
    """The IDM ablation: per task x algo, each other action labeller's arm (dawm-bc,
    dawm-random) minus DAWM's IDM labels, paired over the seeds both have. The runs share the
    world model, its synthetic states and rewards, so the difference is the labels' alone."""
    ok = {(c.task, c.algo, c.arm): c for c in cells if not c.refused}
    return [paired_row(cell, ok[(task, algo, "dawm")], PER_RUN_FIELDS + ("synthetic_actions",),
                       reps, "the runs differ in more than who labels the actions")
            for (task, algo, arm), cell in sorted(ok.items())
            if arm not in ("dawm", "plain") and (task, algo, "dawm") in ok]


def paired_row(a: Cell, b: Cell, ignore: tuple, reps: int, refusal: str) -> dict:
    """a - b over the seeds both cells have (final and last-3), or a refusal when their
    settings differ beyond `ignore`."""
    row = {"task": a.task, "algo": a.algo, "arm": a.arm}
    diff = _setting_differences(a.runs[0].settings(ignore), b.runs[0].settings(ignore))
    if diff:
        row["refused"] = f"{refusal}: " + "; ".join(diff[:4])
        return row
    for metric in ("final", "last3"):
        x, y = a.by_seed(metric), b.by_seed(metric)
        seeds = sorted(set(x) & set(y))
        row[metric] = stats.paired_difference([x[s] for s in seeds], [y[s] for s in seeds],
                                              reps=reps)
        row["seeds"] = seeds
    return row


def aggregate(cells: list[Cell], reps: int, min_seeds: int = 1) -> list[dict]:
    """Per algo, across tasks that have both arms, over the seeds both arms have: the IQM of
    each arm with stratified-bootstrap CIs, and the probability that DAWM improves on plain,
    with its CI."""
    ok = {(c.task, c.algo, c.arm): c for c in cells if not c.refused}
    out = []
    for algo in sorted({c.algo for c in cells}):
        tasks = sorted(t for (t, a, arm) in ok if a == algo and arm == "dawm"
                       and (t, algo, "plain") in ok)
        if not tasks:
            continue
        # the seeds both arms of a task have: a cell still filling would otherwise weigh one
        # arm's extra seeds in its IQM and the probability of improvement
        seeds = {t: sorted(set(ok[(t, algo, "dawm")].by_seed("final"))
                           & set(ok[(t, algo, "plain")].by_seed("final"))) for t in tasks}
        tasks = [t for t in tasks if len(seeds[t]) >= max(min_seeds, 1)]
        if not tasks:
            continue
        for metric in ("final", "last3"):
            per_arm = {arm: [np.array([ok[(t, algo, arm)].by_seed(metric)[s] for s in seeds[t]])
                             for t in tasks] for arm in ("dawm", "plain")}
            row = {"algo": algo, "metric": metric, "tasks": tasks,
                   "seeds": {t: seeds[t] for t in tasks}}
            for arm in ("dawm", "plain"):
                lo, hi = stats.stratified_bootstrap_ci(stats.iqm, per_arm[arm], reps=reps)
                row[f"{arm}_iqm"] = stats.iqm(per_arm[arm])
                row[f"{arm}_iqm_ci"] = [lo, hi]
            poi = stats.probability_of_improvement(per_arm["dawm"], per_arm["plain"])
            lo, hi = stats.stratified_bootstrap_ci(stats.probability_of_improvement,
                                                   per_arm["dawm"], per_arm["plain"], reps=reps)
            row["prob_improvement"], row["prob_improvement_ci"] = poi, [lo, hi]
            out.append(row)
    return out


def world_model_fidelity(cells: list[Cell], pairs: list[dict]) -> list[dict]:
    """Per task: how close its world models (one per seed, shared by the seed's DAWM runs) come
    to the simulator, their synthetic transitions replayed in it, beside DAWM − plain: whether
    DAWM helps where its world model is good. Mean over the seeds' world models; tasks whose
    runs predate the replay check are left out."""
    fields = ("replay_state_error", "replay_still_error", "replay_reward_rmse",
              "action_consistency_mse")
    per_task: dict[str, dict[int, dict]] = {}
    for c in cells:
        if c.arm == "dawm" and not c.refused:
            for r in c.runs:
                per_task.setdefault(c.task, {})[r.results["seed"]] = r.results
    rows = []
    for task, by_seed in sorted(per_task.items()):
        if any(res.get(k) is None for res in by_seed.values() for k in fields):
            continue
        mean = lambda f: float(np.mean([f(res) for res in by_seed.values()]))
        gains = {p["algo"]: p["final"]["mean"] for p in pairs
                 if p["task"] == task and p["arm"] == "dawm" and "final" in p}
        rows.append({
            "task": task, "seeds": sorted(by_seed),
            "state_error": mean(lambda r: r["replay_state_error"]),
            # the share of a no-motion model's error left: comparable across envs, whose state
            # errors differ in scale
            "state_error_vs_still": mean(lambda r: r["replay_state_error"]
                                         / r["replay_still_error"]),
            "reward_rmse": mean(lambda r: r["replay_reward_rmse"]),
            "idm_action_error": mean(lambda r: r["action_consistency_mse"]),
            "dawm_minus_plain_final": gains})
    return rows


def as_roots(roots: Path | list[Path]) -> list[Path]:
    """One sweep directory or several, as a list."""
    return [roots] if isinstance(roots, Path) else list(roots)


def finished_runs(roots: Path | list[Path]) -> list[Run]:
    """The finished runs under one or more sweep directories (ReportError when there is none)."""
    roots = as_roots(roots)
    runs = []
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory; give a sweep directory (python -m "
                              f"dawm_fast.sweep ... --out DIR)")
        found = load_runs(root)
        if not found:
            raise ReportError(f"{root} holds no finished run (no results.json under it); run "
                              f"the sweep first, or wait for its first runs to finish")
        runs += found
    return runs


def make_report(roots: Path | list[Path], reps: int = stats.DEFAULT_REPS,
                runs: list[Run] | None = None, min_seeds: int = 1,
                label: str | None = None) -> dict:
    """`min_seeds`: the paired seeds a task x algo needs to enter the lead table and the
    across-task statistics (a cell still filling stays in the per-cell tables). `label`: what
    the report calls its source (default: the directories; an export names the sweep it came
    from, not the directory it was copied to)."""
    runs = finished_runs(roots) if runs is None else runs
    cells = build_cells(runs)
    roots = as_roots(roots)
    pairs = compare_pairs(cells, reps)
    return {
        "sweep_dir": label or ", ".join(str(r) for r in roots),
        "n_runs": len(runs),
        "cells": [{**c.summary(), "refused": c.refused} for c in cells],
        "pairs": pairs,
        "label_pairs": label_pairs(cells, reps),
        "aggregates": aggregate(cells, reps, min_seeds),
        "world_models": world_model_fidelity(cells, pairs),
        "min_seeds": min_seeds,
        "std": "sample standard deviation over seeds (ddof 1)",
        "ci": f"95% percentile bootstrap, {reps} resamples",
    }


# -- writing ---------------------------------------------------------------------------------------
def _pm(m: float, s: float) -> str:
    if m != m:
        return "—"
    return f"{m:.1f}" if s != s else f"{m:.1f} ± {s:.1f}"


def _num(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _ci(d: dict) -> str:
    if d["ci_low"] != d["ci_low"]:
        return f"{d['mean']:+.1f} (n={d['n']}, no CI)"
    return f"{d['mean']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"


MADE_BY = "Made by:"      # report.md's block of commands; source_commands reads older ones back


def to_markdown(rep: dict) -> str:
    lines = [f"# Sweep report: `{rep['sweep_dir']}`", ""]
    if rep.get("commands"):
        lines += [MADE_BY, "", "```", *rep["commands"], "```", ""]
    for src in rep.get("sources", []):
        # a report over several committed reports: each one's runs and how they were made
        lines += [f"Runs from `{src['dir']}`" + (", made by:" if src["commands"] else
                                                  " (no command recorded)"), ""]
        if src["commands"]:
            lines += ["```", *src["commands"], "```", ""]
    lines += [f"{rep['n_runs']} finished runs. Scores are D4RL-normalized. **final**: the final "
              f"evaluation of each run; **last 3**: the mean of its last three evaluations during "
              f"training. ± is the {rep['std']}; CIs are {rep['ci']}.", ""]
    ok = [c for c in rep["cells"] if not c["refused"]]
    lines += lead_table(rep)
    lines += ["## Per task × algo × arm", "",
              "| task | algo | arm | seeds | final | last 3 | data | eval env | reference | "
              "preset | backend |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
              "| --- |"]
    for c in ok:
        flag = "" if c["settings_known"] else " ⚑ settings not recorded"
        if len(c["git_commits"]) > 1:
            flag += f" ⚑ {len(c['git_commits'])} commits"
        lines.append(f"| {c['task']} | {c['algo']} | {c['arm']}{flag} | {c['n_seeds']} | "
                     f"{_pm(c['final_mean'], c['final_std'])} | "
                     f"{_pm(c['last3_mean'], c['last3_std'])} | {c['dataset_source']} | "
                     f"{c['eval_env']} | {c['score_reference']} | {c['preset']} | "
                     f"{c['backend']} |")
    refused = [c for c in rep["cells"] if c["refused"]]
    if refused:
        lines += ["", "## Refused cells (runs of different settings; left out of every statistic)",
                  ""]
        lines += [f"- {c['task']} {c['algo']} {c['arm']}: {'; '.join(c['refused'])}"
                  for c in refused]
    if rep["pairs"]:
        lines += ["", "## DAWM − plain, paired over seeds (95% bootstrap CI)", "",
                  "| task | algo | arm − plain | seeds | final | last 3 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in rep["pairs"]:
            if "refused" in p:
                lines.append(f"| {p['task']} | {p['algo']} | {p['arm']} | — | {p['refused']} | |")
            else:
                lines.append(f"| {p['task']} | {p['algo']} | {p['arm']} | {len(p['seeds'])} | "
                             f"{_ci(p['final'])} | {_ci(p['last3'])} |")
    lines += label_table(rep, ok)
    lines += fidelity_table(rep)
    if rep["aggregates"]:
        lines += ["", "## Across tasks (IQM and probability of improvement, stratified "
                      "bootstrap 95% CIs; Agarwal et al. 2021)", "",
                  "| algo | metric | tasks | IQM DAWM | IQM plain | P(DAWM > plain) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for a in rep["aggregates"]:
            lines.append(
                f"| {a['algo']} | {a['metric']} | {len(a['tasks'])} | {a['dawm_iqm']:.1f} "
                f"[{a['dawm_iqm_ci'][0]:.1f}, {a['dawm_iqm_ci'][1]:.1f}] | {a['plain_iqm']:.1f} "
                f"[{a['plain_iqm_ci'][0]:.1f}, {a['plain_iqm_ci'][1]:.1f}] | "
                f"{a['prob_improvement']:.2f} [{a['prob_improvement_ci'][0]:.2f}, "
                f"{a['prob_improvement_ci'][1]:.2f}] |")
    lines += ["", "Plots: `plots/curves_<task>.png` (mean eval score with a ± std band over "
                  "seeds), `plots/aggregates.png`.", ""]
    return "\n".join(lines)


LABELLERS = {"dawm": "IDM (DAWM)", "dawm-bc": "BC policy", "dawm-random": "uniform random"}


def label_table(rep: dict, ok: list[dict]) -> list[str]:
    """The IDM ablation's table: per task x algo where an ablation arm ran, each action
    labeller's score and action error, and its paired difference from the IDM's labels."""
    ablated = {(c["task"], c["algo"]) for c in ok if c["arm"] not in ("dawm", "plain")}
    labelled = [c for c in ok if c["arm"] != "plain" and (c["task"], c["algo"]) in ablated]
    if not labelled:
        return []
    vs_idm = {(p["task"], p["algo"], p["arm"]): p for p in rep.get("label_pairs", [])}
    lines = ["", "## Who labels the synthetic actions (same world model, states, rewards)", "",
             "Action error: the labeller's action against the real a_t at window starts (MSE per "
             "element). Replay: the synthetic transitions put back into the simulator, next-state "
             "error (standardized MSE). − IDM: the labeller's score minus the IDM's, paired over "
             "seeds (95% bootstrap CI).", "",
             "| task | algo | actions from | seeds | final | last 3 | action error | replay error "
             "| − IDM, final | − IDM, last 3 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in labelled:
        p = vs_idm.get((c["task"], c["algo"], c["arm"]))
        versus = (["", ""] if p is None else [p["refused"], ""] if "refused" in p else
                  [_ci(p["final"]), _ci(p["last3"])])
        cells = [c["task"], c["algo"], LABELLERS.get(c["arm"], c["arm"]), c["n_seeds"],
                 _pm(c["final_mean"], c["final_std"]), _pm(c["last3_mean"], c["last3_std"]),
                 _num(c["label_action_mse"]), _num(c["label_replay_state_error"]), *versus]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def fidelity_table(rep: dict) -> list[str]:
    """The report's world-model table: per task, the replay errors beside DAWM − plain."""
    rows = rep.get("world_models") or []
    if not rows:
        return []
    algos = sorted({a for r in rows for a in r["dawm_minus_plain_final"]})
    name = {"td3bc": "TD3+BC", "iql": "IQL"}
    lines = ["", "## World models beside the gain", "",
             "Each task's world models (one per seed) with their synthetic transitions replayed "
             "in the simulator: next-state error (standardized MSE) and the share it is of the "
             "error of a model that predicts no motion, reward RMSE, and the IDM's action error "
             "at window starts (MSE per element); beside DAWM − plain (final, mean over the "
             "paired seeds).", "",
             "| task | world models | state error | ÷ no motion | reward RMSE | IDM action error | "
             + " | ".join(f"DAWM − plain: {name.get(a, a)}" for a in algos) + " |",
             "| --- " * (6 + len(algos)) + "|"]
    for r in rows:
        gains = [r["dawm_minus_plain_final"].get(a) for a in algos]
        lines.append(f"| {r['task']} | {len(r['seeds'])} | {r['state_error']:.4f} | "
                     f"{r['state_error_vs_still']:.2f} | {r['reward_rmse']:.3f} | "
                     f"{r['idm_action_error']:.4f} | "
                     + " | ".join("—" if g is None else f"{g:+.1f}" for g in gains) + " |")
    return lines


def lead_table(rep: dict) -> list[str]:
    """One row per task x algo with both arms: plain and DAWM (mean ± std over seeds) and their
    paired difference with its CI, for the final score and the last three evaluations; then the
    across-task IQM and probability of improvement. The table RESULTS.md leads with."""
    cells = {(c["task"], c["algo"], c["arm"]): c for c in rep["cells"] if not c["refused"]}
    pairs = [p for p in rep["pairs"] if p["arm"] == "dawm" and "refused" not in p]
    rows = [p for p in pairs if len(p["seeds"]) >= rep.get("min_seeds", 1)]
    filling = [p for p in pairs if p not in rows]
    if not pairs:
        return []
    name = {"td3bc": "TD3+BC", "iql": "IQL"}
    lines = ["## DAWM vs plain", ""]
    if rows:
        lines += ["| task | algo | seeds | plain: final | DAWM: final | DAWM − plain, final | "
                  "plain: last 3 | DAWM: last 3 | DAWM − plain, last 3 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def paired(cell, metric, seeds):      # mean ± std over the seeds of the difference
        return _pm(*stats.mean_std([cell[f"{metric}_by_seed"][s] for s in seeds]))

    for p in rows:
        d, b = cells[(p["task"], p["algo"], "dawm")], cells[(p["task"], p["algo"], "plain")]
        seeds = p["seeds"]
        span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
            and len(seeds) > 1 else ",".join(map(str, seeds))
        lines.append(f"| {p['task']} | {name.get(p['algo'], p['algo'])} | {len(seeds)} ({span}) | "
                     f"{paired(b, 'final', seeds)} | {paired(d, 'final', seeds)} | "
                     f"{_ci(p['final'])} | {paired(b, 'last3', seeds)} | "
                     f"{paired(d, 'last3', seeds)} | {_ci(p['last3'])} |")
    if rep["aggregates"]:
        lines += ["", "| algo | tasks | IQM plain: final | IQM DAWM: final | P(DAWM > plain), "
                      "final | IQM plain: last 3 | IQM DAWM: last 3 | P(DAWM > plain), last 3 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        by = {(a["algo"], a["metric"]): a for a in rep["aggregates"]}
        fmt = lambda a, k: f"{a[k]:.1f} [{a[k + '_ci'][0]:.1f}, {a[k + '_ci'][1]:.1f}]"
        poi = lambda a: (f"{a['prob_improvement']:.2f} [{a['prob_improvement_ci'][0]:.2f}, "
                         f"{a['prob_improvement_ci'][1]:.2f}]")
        for algo in sorted({a for a, _ in by}):
            f, l3 = by.get((algo, "final")), by.get((algo, "last3"))
            if f is None or l3 is None:
                continue
            lines.append(f"| {name.get(algo, algo)} | {len(f['tasks'])} | {fmt(f, 'plain_iqm')} | "
                         f"{fmt(f, 'dawm_iqm')} | {poi(f)} | {fmt(l3, 'plain_iqm')} | "
                         f"{fmt(l3, 'dawm_iqm')} | {poi(l3)} |")
    if filling:
        lines += ["", f"Still filling (fewer than {rep['min_seeds']} paired seeds; in the tables "
                      f"below, not in these): " + ", ".join(
                          f"{p['task']} {name.get(p['algo'], p['algo'])} ({len(p['seeds'])})"
                          for p in filling) + "."]
    return lines + [""]


def plot_name(task: str) -> str:
    """A task label as a file name (labels like "hopper-medium-replay (10% of episodes)")."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", task).strip("_")


def write_plots(rep: dict, runs: list[Run], plot_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ok = {(c["task"], c["algo"], c["arm"]) for c in rep["cells"] if not c["refused"]}
    for task in sorted({k[0] for k in ok}):
        algos = sorted({k[1] for k in ok if k[0] == task})
        fig, axes = plt.subplots(1, len(algos), figsize=(5 * len(algos), 3.6), squeeze=False)
        for ax, algo in zip(axes[0], algos):
            for arm, color in ARM_COLORS.items():
                curves = [dict(r.evals) for r in runs if r.key == (task, algo, arm)]
                if (task, algo, arm) not in ok or not curves:
                    continue
                steps = sorted(set.intersection(*(set(c) for c in curves)))
                if not steps:
                    continue
                y = np.array([[c[s] for s in steps] for c in curves])
                m, sd = y.mean(0), y.std(0, ddof=1) if len(y) > 1 else np.zeros(len(steps))
                ax.plot(steps, m, color=color, label=f"{arm} ({len(curves)} seeds)")
                ax.fill_between(steps, m - sd, m + sd, color=color, alpha=0.2)
            ax.set_title(f"{task} {algo}")
            ax.set_xlabel("RL updates")
            ax.set_ylabel("normalized score")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = plot_dir / f"curves_{plot_name(task)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if rep["aggregates"]:
        rows = rep["aggregates"]
        fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
        x = np.arange(len(rows))
        for i, arm in enumerate(("dawm", "plain")):
            color = ARM_COLORS[arm]
            vals = np.array([r[f"{arm}_iqm"] for r in rows])
            ci = np.array([r[f"{arm}_iqm_ci"] for r in rows]).T
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, color=color, label=arm,
                   yerr=np.abs(ci - vals), capsize=3)
        ax.set_xticks(x, [f"{r['algo']}\n{r['metric']}" for r in rows])
        ax.set_ylabel("IQM normalized score (95% CI)")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = plot_dir / "aggregates.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_report(roots: Path | list[Path], reps: int = stats.DEFAULT_REPS,
                 commands: list[str] | None = None, out: Path | None = None,
                 min_seeds: int = 1, label: str | None = None) -> dict:
    """Report on the runs under `roots` (one sweep, or several: e.g. the committed reports of
    several programs, for one table across them), written to `out` (default: the one root)."""
    roots = as_roots(roots)
    if out is None:
        if len(roots) != 1:
            raise ReportError("several sweep directories: say where the report goes with --out DIR")
        out = roots[0]
    runs = finished_runs(roots)              # read once, for the numbers and the plots
    rep = make_report(roots, reps, runs, min_seeds, label)
    rep["commands"] = list(commands or [])
    if len(roots) > 1:
        rep["sources"] = [{"dir": str(r), "commands": source_commands(r)} for r in roots]
    from dawm_fast.run_io import atomic_write_text, write_json
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", to_markdown(rep))
    write_plots(rep, runs, out / "plots")
    return rep


def source_commands(root: Path) -> list[str]:
    """The commands that made a committed report's runs: its report.json's "commands", or, for
    a report written before report.json kept them, the "Made by:" block of its report.md. []
    for a plain sweep directory (no report yet) or a report made without --command."""
    try:
        return list(json.loads((root / "report.json").read_text())["commands"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        lines = (root / "report.md").read_text().splitlines()
        start = lines.index(MADE_BY) + 3                 # MADE_BY, "", "```"
        return lines[start:lines.index("```", start)]
    except (OSError, ValueError):
        return []


# What a finished run leaves that is worth keeping: no checkpoints, no synthetic data.
EXPORTED = ("results.json", "metrics.csv", "config.json", "progress.json", "dynamics_check.json",
            "plots/*.png")


# Exported files that may name machine paths (a reused world model's source, a run's world
# model directory): rewritten through the export's path aliases. Plots are copied as they are.
TEXT_SUFFIXES = (".json", ".csv", ".md", ".txt")


def apply_aliases(text: str, aliases: list[tuple[str, str]]) -> str:
    """Each (OLD, NEW) of an export's --path-alias, in order."""
    for old, new in aliases:
        text = text.replace(old, new)
    return text


def parse_alias(spec: str) -> tuple[str, str]:
    """'OLD=NEW' -> (OLD, NEW); ReportError on anything else."""
    old, sep, new = spec.partition("=")
    if not sep or not old:
        raise ReportError(f"--path-alias {spec!r} is not OLD=NEW (e.g. --path-alias "
                          f"/work/runs/=sweeps/)")
    return old, new


def export_results(root: Path, dest: Path, aliases: list[tuple[str, str]] = ()) -> int:
    """Copy the results of every finished run under `root` (and the sweep's own record) to
    `dest`, keeping the layout; returns the number of files copied. `aliases` (OLD, NEW)
    rewrite machine paths in the text files, so what is committed names no one's disk."""
    import shutil

    if not root.is_dir():
        raise ReportError(f"{root} is not a directory; give a sweep directory")
    runs = sorted(p.parent for p in root.rglob("results.json") if p.parent != root)
    if not runs:
        raise ReportError(f"{root} holds no finished run (no results.json under it); nothing to "
                          f"export")
    n = 0
    sources = [root / "sweep.json"] + [f for run in runs for pattern in EXPORTED
                                       for f in sorted(run.glob(pattern))]
    # the world models the runs read: their progress (what they measured) and config; one still
    # training or generating is left for a later export (its files would say half a story)
    for wm in sorted((root / "wm").glob("*")) if (root / "wm").is_dir() else []:
        if "generation" not in stages_done(wm):
            continue
        sources += [wm / "progress.json", wm / "config.json", wm / "dynamics_check.json",
                    *sorted(wm.glob("plots/*.png")), wm / "metrics.csv"]
    for src in sources:
        if src.is_file():
            target = dest / src.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if aliases and src.suffix in TEXT_SUFFIXES:
                # decoded from bytes, not read as text: a CSV's \r\n line ends stay as they are
                text = src.read_bytes().decode("utf-8", errors="surrogateescape")
                target.write_bytes(apply_aliases(text, aliases).encode(
                    "utf-8", errors="surrogateescape"))
            else:
                shutil.copy2(src, target)
            n += 1
    return n
