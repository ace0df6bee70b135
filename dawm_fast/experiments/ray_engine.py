"""`--engine ray`: every world-model job and every RL job is a Ray task with its own resources.

A DAWM run's task takes its world model's task as an argument, so Ray starts it only when that
world model is finished, and a cluster runs the grid in dependency order without a scheduler of
ours. Jobs run `python -m dawm_fast.train` in the sweep directory, so on a multi-node cluster that
directory must be on a filesystem every node sees (NFS, a shared volume), and each node needs
dawm_fast installed.
"""
from __future__ import annotations

import time
from pathlib import Path

from dawm_fast.experiments.grid import GridError, Job, JobOutcome, SweepSummary, error_line
from dawm_fast.experiments.runner import BUSY_EXIT, start_job

MAX_BUSY_WAIT_S = 24 * 3600.0


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GridError("--engine ray needs Ray, which is an optional extra: "
                        "pip install -e '.[ray]' (or pip install 'ray[default]')") from None
    return ray


def _run_job_task(job: Job, sweep_dir: str, threads: int, ddp_processes: int,
                  *dependencies) -> dict:
    """Body of a Ray task: run the job unless its world model failed; a busy run directory
    (another sweep owns it) is waited for."""
    for dep in dependencies:
        if dep["status"] == "failed":
            return {"status": "failed", "wall_s": 0.0,
                    "error": f"its world model {dep['name']} failed: {dep['error']}"}
    t0 = time.time()
    while True:
        rc = start_job(job, Path(sweep_dir), threads, ddp_processes=ddp_processes).wait()
        if rc != BUSY_EXIT or time.time() - t0 > MAX_BUSY_WAIT_S:
            break
        time.sleep(10.0)
    wall = time.time() - t0
    if rc == 0:
        return {"name": job.name, "status": "done", "wall_s": wall, "error": None}
    return {"name": job.name, "status": "failed", "wall_s": wall,
            "error": f"exit {rc}: {error_line(Path(sweep_dir) / job.log_name)}"}


def run_ray(jobs: list[Job], sweep_dir: Path, threads: int, address: str | None,
            cpus_per_run: float, gpus_per_run: float, num_cpus: int | None = None) -> SweepSummary:
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    remote = ray.remote(_run_job_task)
    sweep_dir = sweep_dir.resolve()
    refs, outcomes = {}, {}
    for job in jobs:       # world models come first in the job list, so their refs exist
        if job.finished(sweep_dir):
            outcomes[job.name] = JobOutcome(job, "skipped")
            continue
        deps = [refs[job.depends_on]] if job.depends_on in refs else []
        # a world model trains on all its GPUs (torchrun inside the task); an RL run uses one
        gpus = gpus_per_run if job.kind == "wm" else min(gpus_per_run, 1.0)
        ddp = int(gpus_per_run) if job.kind == "wm" and gpus_per_run >= 2 else 1
        refs[job.name] = remote.options(num_cpus=cpus_per_run, num_gpus=gpus,
                                        name=job.name).remote(job, str(sweep_dir), threads, ddp,
                                                              *deps)
    print(f"[sweep] {len(jobs)} jobs: {len(outcomes)} finished earlier, {len(refs)} submitted "
          f"to Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
          f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs in the cluster)", flush=True)
    by_ref = {ref: name for name, ref in refs.items()}
    waiting = list(refs.values())
    job_of = {j.name: j for j in jobs}
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        res = ray.get(ready[0])
        name = by_ref[ready[0]]
        outcomes[name] = JobOutcome(job_of[name], res["status"], res["wall_s"], res["error"])
        word = "done" if res["status"] == "done" else f"FAILED: {res['error']}"
        print(f"[sweep] {name} {word} ({len(refs) - len(waiting)}/{len(refs)})", flush=True)
    summary = SweepSummary()
    summary.outcomes = [outcomes[j.name] for j in jobs if j.name in outcomes]
    return summary
