"""Run one sweep job: `python -m dawm_fast.train ...` in the sweep directory, output to its log.

Both engines (local worker processes, Ray tasks) start jobs through `start_job`, so a job runs the
same way wherever it runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dawm_fast.experiments.grid import Job
# The exit code `dawm_fast.train` uses when another live process owns the run directory: the
# job is not failed, it is busy (a second sweep on the same directory); retry it later.
from dawm_fast.run_lock import BUSY_EXIT_CODE as BUSY_EXIT  # noqa: F401 (engines import it here)


def job_env(threads: int, gpus: list[int] | None = None) -> dict:
    env = dict(os.environ)
    # One thread per process unless asked otherwise: on busy cores, torch processes with two
    # OpenMP threads each ran many times slower than with one (MACHINE-NOTES).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus is not None:          # the local engine's GPU pool (Ray sets this itself)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    return env


def job_command(job: Job, threads: int, ddp_processes: int = 1) -> list[str]:
    """`python -m dawm_fast.train ...`; a world model given several GPUs trains data-parallel,
    one torchrun process per GPU."""
    train = ["-m", "dawm_fast.train", *job.args, "--threads", str(threads)]
    if job.kind == "wm" and ddp_processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(ddp_processes), *train]
    return [sys.executable, *train]


def start_job(job: Job, sweep_dir: Path, threads: int, gpus: list[int] | None = None,
              ddp_processes: int = 1) -> subprocess.Popen:
    log_path = sweep_dir / job.log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = job_command(job, threads, ddp_processes)
    log = open(log_path, "a")
    gpu_note = f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))} " if gpus is not None else ""
    log.write(f"$ {gpu_note}python {' '.join(cmd[1:])}\n")
    log.flush()
    # Its own session: stopping the sweep signals each run itself (it checkpoints and exits),
    # and a terminal's Ctrl-C reaches the sweep only.
    proc = subprocess.Popen(cmd, cwd=sweep_dir, stdout=log, stderr=subprocess.STDOUT,
                            env=job_env(threads, gpus), start_new_session=True)
    log.close()
    return proc
