"""`python -m dawm_fast.sweep`: a grid of DAWM and plain runs, one shared world model per
(task, seed, world-model settings), on local worker processes or a Ray cluster. Re-running the
same command skips finished runs and resumes unfinished ones.

    python -m dawm_fast.sweep --envs hopper-medium-replay,walker2d-medium-replay \\
        --algos td3bc,iql --arms dawm,plain --seeds 0,1,2 --preset cpu --workers 2 --out sweeps/mr
    python -m dawm_fast.report sweeps/mr
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from dawm_fast.experiments.grid import (ARMS, GridError, Job, SweepSettings, check_settings,
                                        expand_tasks, plan, saved_settings,
                                        world_model_finished)
from dawm_fast.run_io import format_duration, die, read_metric_rows
from dawm_fast.run_progress import stages_done


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dawm_fast.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", required=True,
                   help="comma-separated task names, or 'locomotion' for the nine D4RL tasks")
    p.add_argument("--algos", default="td3bc,iql", help="comma-separated: td3bc, iql")
    p.add_argument("--arms", default="dawm,plain",
                   help=f"comma-separated: {', '.join(ARMS)} (plain = --synthetic-ratio 0)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers, or a range 0-4")
    p.add_argument("--preset", default=None,
                   help="smoke | cpu | paper (default: paper with a GPU, cpu without)")
    p.add_argument("--backend", default=None,
                   help="auto | reference | fast, for every run (default: the sweep directory's "
                        "own; for a new one auto: fast where the C++ extension runs)")
    p.add_argument("--device", default=None, help="torch device for every run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override passed to every run (e.g. synthetic_ratio=0.25)")
    p.add_argument("--out", type=Path, required=True, help="the sweep directory")
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--workers", type=int, default=1, help="local engine: parallel runs")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="torch threads per run (default 1: two threads per process on busy "
                        "cores ran many times slower than one)")
    p.add_argument("--address", default=None,
                   help="ray engine: the cluster address (default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=None,
                   help="ray engine: CPUs a run reserves (default: --threads-per-worker)")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs a world model trains on (more than one: data-parallel under "
                        "torchrun); an RL run uses one. Ray: fractions share a GPU. Default: 1 "
                        "where GPUs are visible, else 0")
    p.add_argument("--gpus", type=int, default=None,
                   help="local engine: GPUs to hand out to runs (default: all torch sees)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and its estimated time; run nothing")
    p.add_argument("--reuse-world-models", type=Path, action="append", default=[],
                   metavar="SWEEP",
                   help="another sweep directory whose trained world models a world-model job "
                        "of this one starts from when they differ only in generation settings "
                        "(target return, sampling); this sweep's own are always looked at")
    p.add_argument("--force", action="store_true",
                   help="add runs to a sweep directory made with other settings")
    return p.parse_args(argv)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    try:
        for part in _split(text):
            lo, sep, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
    except ValueError:
        raise GridError(f"--seeds {text!r}: expected integers like 0,1,2 or a range 0-4") \
            from None
    return sorted(set(seeds))


def config_of(train_args: list[str]):
    """The PipelineConfig the train CLI's own parsing makes of these arguments (bad ones stop
    here, with the CLI's one-line error)."""
    from dawm_fast import train

    return train.build_config(train.parse_args(train_args))


def world_model_fingerprint_of(train_args: list[str]) -> str:
    from dawm_fast.config import world_model_fingerprint

    return world_model_fingerprint(config_of(train_args))


@dataclass(frozen=True)
class JobRecord:
    """What a job's directory says at plan time, read once per job."""
    finished: bool
    ran_minutes: float = 0.0     # a world model's finished stages; a finished RL run's whole time
    left_fraction: float = 1.0   # an unfinished RL run's share of updates still to do


def read_records(jobs: list[Job], sweep_dir: Path) -> dict[str, JobRecord]:
    return {j.name: read_record(j, sweep_dir) for j in jobs}


def read_record(job: Job, sweep_dir: Path) -> JobRecord:
    run = sweep_dir / job.name
    if job.kind == "wm":
        done = stages_done(run)
        return JobRecord(world_model_finished(run, done),
                         sum(v.get("wall_s", 0.0) for v in done.values()
                             if isinstance(v, dict)) / 60)
    finished = job.finished(sweep_dir)
    try:
        if finished:
            wall = json.loads((run / "results.json").read_text())["wall_time_s"]
            return JobRecord(True, sum(wall.values()) / 60, 0.0)
        steps = json.loads((run / "config.json").read_text())["rl_steps"]
        return JobRecord(False, left_fraction=1.0 - min(last_rl_step(run) / steps, 1.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return JobRecord(finished)


def last_rl_step(run: Path) -> int:
    """The last update an RL run logged (0 before its first): a resumed run has only the rest
    left, and planning it as a whole run put a finished-but-for-a-few-updates run at 20 min."""
    return max((int(row["step"]) for row in read_metric_rows(run / "metrics.csv")
                if row.get("stage") == "rl"), default=0)


def measured_minutes(jobs: list[Job], records: dict[str, JobRecord]) -> dict[str, float]:
    """Median measured minutes per job kind ("wm", "td3bc", "iql") over this sweep's finished jobs.
    The median, because runs copied in from another machine or made under other load (a resumed
    sweep) can take several times as long as the rest and would skew a mean."""
    times: dict[str, list[float]] = {}
    for job in jobs:
        rec = records[job.name]
        if rec.finished and rec.ran_minutes > 0:  # a stopped or seeded world model is part of one
            times.setdefault(job.timing_kind, []).append(rec.ran_minutes)
    return {k: statistics.median(v) for k, v in times.items()}


def job_minutes(jobs: list[Job], records: dict[str, JobRecord], preset: str) -> dict[str, float]:
    """Expected minutes of each job still to run: measured in this sweep for its kind, else the
    preset's, less what the job already has: a world model seeded by --reuse-world-models (or
    stopped mid-way) has its training stages done and only generates (counting it as a whole
    world model put hours of phantom time into the plan); an RL run resumed from its checkpoint
    has only its remaining updates left."""
    measured = measured_minutes(jobs, records)
    minutes = {}
    for j in jobs:
        full = measured.get(j.timing_kind, j.estimated_minutes(preset))
        rec = records[j.name]
        if j.kind == "wm":
            # the stages left take at least a tenth of a world model (generation, the plots)
            full = max(full - rec.ran_minutes, 0.1 * full)
        elif not rec.finished:
            # the final evaluation and plots are left even after the last update
            full = max(full * rec.left_fraction, 0.05 * full)
        minutes[j.name] = full
    return minutes


def print_plan(jobs: list[Job], records: dict[str, JobRecord], preset: str,
               workers: int) -> dict[str, float]:
    """Prints each job's state and the grid's time; returns each job's expected minutes."""
    measured = measured_minutes(jobs, records)
    todo = [j for j in jobs if not records[j.name].finished]
    minutes = job_minutes(jobs, records, preset)
    for j in jobs:
        state = "finished" if j not in todo else f"~{minutes[j.name]:.0f} min"
        dep = f"  (reads {j.depends_on})" if j.depends_on else ""
        print(f"  {j.name:<58} {state}{dep}")
    total = sum(minutes[j.name] for j in todo)
    # the grid cannot finish before its longest chain: a world model, then one run that reads it
    chain = max((minutes[j.name] + (minutes[j.depends_on] if j.depends_on in
                                    {t.name for t in todo} else 0)) for j in todo) if todo else 0
    wall = max(total / max(workers, 1), chain)
    n_wm = sum(j.kind == "wm" for j in jobs)
    source = (f"measured in this sweep for {', '.join(sorted(measured))}, estimated for the "
              f"rest" if measured else "per-preset estimates")
    print(f"[sweep] plan: {len(jobs)} jobs ({n_wm} world models, {len(jobs) - n_wm} RL runs), "
          f"{len(jobs) - len(todo)} finished; to run: {len(todo)} jobs, ~{total:.0f} "
          f"worker-minutes, ~{format_duration(wall * 60)} on {workers} worker(s) ({source})",
          flush=True)
    return minutes


def sweep_backend(args) -> str:
    """The runs' backend, resolved once for the whole sweep: --backend, else the one the sweep
    directory was made with, else auto."""
    requested = args.backend
    if requested is None:
        requested = (saved_settings(args.out) or {}).get("backend") or "auto"
    import torch
    from dawm_fast.backends import BackendUnavailable, resolve_backend
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return resolve_backend(requested, device)[0]
    except BackendUnavailable as e:
        raise GridError(f"{e}; use --backend reference") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workers < 1 or args.threads_per_worker < 1:
        die("--workers and --threads-per-worker must be at least 1")
    try:
        tasks = expand_tasks(_split(args.envs))
        algos, arms, seeds = _split(args.algos), _split(args.arms), parse_seeds(args.seeds)
        import torch
        preset = args.preset or ("paper" if (args.device or "").startswith("cuda") or (
            args.device is None and torch.cuda.is_available()) else "cpu")
        settings = SweepSettings(preset=preset, backend=sweep_backend(args), device=args.device,
                                 overrides=tuple(args.set))
        for other in args.reuse_world_models:
            if not (other / "wm").is_dir():
                raise GridError(f"--reuse-world-models {other} has no wm/ directory: give a "
                                f"sweep directory (the --out of another sweep)")
        jobs = plan(tasks, algos, arms, seeds, settings, world_model_fingerprint_of)
        out = args.out
        n_workers = args.workers if args.engine == "local" else 1
        if args.dry_run:
            print_plan(jobs, read_records(jobs, out), preset, n_workers)
            return 0
        check_settings(out, settings, args.force)
        from dawm_fast.experiments.reuse import reuse_trained_world_models
        for line in reuse_trained_world_models(jobs, out, args.reuse_world_models, config_of):
            print(f"[sweep] {line}", flush=True)
        # read after the reuse step, which may have seeded world models
        minutes = print_plan(jobs, read_records(jobs, out), preset, n_workers)
        visible = torch.cuda.device_count()
        gpus_per_run = args.gpus_per_run if args.gpus_per_run is not None else \
            (1.0 if visible else 0.0)
        if args.engine == "ray":
            from dawm_fast.experiments.ray_engine import run_ray
            summary = run_ray(jobs, out, args.threads_per_worker, args.address,
                              args.cpus_per_run or args.threads_per_worker, gpus_per_run)
        else:
            from dawm_fast.experiments.local_engine import run_local
            gpus = visible if args.gpus is None else args.gpus
            if gpus_per_run != int(gpus_per_run) or (gpus and gpus_per_run > gpus):
                raise GridError(f"--gpus-per-run {gpus_per_run:g}: the local engine gives whole "
                                f"GPUs, at most the {gpus} it has")
            summary = run_local(jobs, out, args.workers, args.threads_per_worker, gpus,
                                int(gpus_per_run) if gpus else 0,
                                expected_minutes=minutes)
    except GridError as e:
        die(str(e))
    except KeyboardInterrupt:
        print(f"\n[sweep] stopped: running jobs were checkpointed; rerun the same command to "
              f"resume {args.out}", file=sys.stderr, flush=True)
        return 130
    counts = summary.counts()
    failed = [o for o in summary.outcomes if o.status == "failed"]
    print(f"[sweep] finished: {counts.get('done', 0)} ran, {counts.get('skipped', 0)} finished "
          f"earlier, {len(failed)} failed", flush=True)
    for o in failed:
        print(f"[sweep] failed {o.job.name}: {o.error} (log: {args.out / o.job.log_name})",
              flush=True)
    print(f"[sweep] report: python -m dawm_fast.report {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
