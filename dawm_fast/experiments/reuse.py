"""Train a world model once for every generation setting: seed a sweep's world-model jobs with
the IDM and diffusion model of a finished one that differs only in how it generates.

A world-model job's directory is named by the fingerprint of everything that decides its
synthetic data, the guidance target and sampling settings included. A sweep over those (another
--target-return, target_mode, guidance weight) would train the same IDM and diffusion model again
for each; the training (tens of minutes on a CPU, hours at paper scale) is almost all of a world
model job, the generation a minute. Before a sweep runs, each world-model job that has not started
gets, from a finished world-model directory with the same training fingerprint (in this sweep or
in --reuse-world-models sweeps), its idm.pt, world_model.pt, normalizers and the progress and
metrics of those stages; the job then skips to generation. Nothing is shared by link: the copy
is the job's own, and the source directory is only read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from dawm_fast.config import ConfigMigrationError, config_from_dict, world_model_training_fingerprint
from dawm_fast.experiments.grid import Job
from dawm_fast.run_io import MetricsLog, write_json
from dawm_fast.run_progress import stages_done

TRAINED_STAGES = ("data", "idm", "world_model")
TRAINED_FILES = ("idm.pt", "world_model.pt")


def trained_world_models(sweep_dirs: list[Path]) -> dict[str, Path]:
    """Training fingerprint -> a world-model directory whose IDM and world model are trained."""
    found: dict[str, Path] = {}
    for sweep in sweep_dirs:
        for run in sorted((sweep / "wm").glob("*")):
            done = stages_done(run)
            try:
                cfg = config_from_dict(json.loads((run / "config.json").read_text()))
            except (OSError, ValueError, KeyError, TypeError, ConfigMigrationError):
                continue
            if all(s in done for s in TRAINED_STAGES) and all(
                    (run / f).exists() for f in TRAINED_FILES):
                found.setdefault(world_model_training_fingerprint(cfg), run)
    return found


def seed_from(source: Path, run: Path, config: dict) -> None:
    """Give the unstarted world-model directory `run` (its config: `config`) the trained stages
    of `source`."""
    tmp = run.with_name(run.name + ".reusing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TRAINED_FILES:
        shutil.copy2(source / name, tmp / name)
    shutil.copytree(source / "normalizers", tmp / "normalizers")
    done = json.loads((source / "progress.json").read_text())["done"]
    done = {s: v for s, v in done.items() if s in TRAINED_STAGES}
    done["world_model"]["reused_from"] = str(source)
    # no identity: the job's run writes its own (a source made by a sweep of other algos or
    # ratios has another, and would be refused as another run's directory)
    write_json(tmp / "progress.json", {"done": done})
    write_json(tmp / "config.json", config)     # what the job's run will check it resumes
    if (source / "metrics.csv").exists():
        shutil.copy2(source / "metrics.csv", tmp / "metrics.csv")
        MetricsLog(tmp / "metrics.csv").keep_stages(TRAINED_STAGES)
    tmp.rename(run)          # the job sees a whole seeded directory or none


def reuse_trained_world_models(jobs: list[Job], sweep_dir: Path, other_sweeps: list[Path],
                               config_of) -> list[str]:
    """Seed every world-model job of `jobs` whose directory does not exist yet from a trained
    world model with its training fingerprint, found in `sweep_dir` or `other_sweeps`;
    `config_of(job.args)` is the PipelineConfig the job's run makes. Returns one line per job
    seeded."""
    todo = [j for j in jobs if j.kind == "wm" and not (sweep_dir / j.name).exists()]
    if not todo:
        return []
    found = trained_world_models([sweep_dir, *other_sweeps])
    lines = []
    for job in todo:
        cfg = config_of(job.args)
        source = found.get(world_model_training_fingerprint(cfg))
        if source is not None:
            seed_from(source, sweep_dir / job.name, cfg.to_dict())
            lines.append(f"{job.name}: IDM and world model from {source} (they differ only in "
                         f"generation settings); only generation runs")
    return lines
