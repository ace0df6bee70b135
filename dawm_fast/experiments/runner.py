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


def job_env(threads: int) -> dict:
    env = dict(os.environ)
    # One thread per process unless asked otherwise: on busy cores, torch processes with two
    # OpenMP threads each ran many times slower than with one (MACHINE-NOTES).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_job(job: Job, sweep_dir: Path, threads: int) -> subprocess.Popen:
    log_path = sweep_dir / job.log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")
    log.write(f"$ python -m dawm_fast.train {' '.join(job.args)} --threads {threads}\n")
    log.flush()
    # Its own session: stopping the sweep signals each run itself (it checkpoints and exits),
    # and a terminal's Ctrl-C reaches the sweep only.
    proc = subprocess.Popen([sys.executable, "-m", "dawm_fast.train", *job.args,
                             "--threads", str(threads)], cwd=sweep_dir, stdout=log,
                            stderr=subprocess.STDOUT, env=job_env(threads),
                            start_new_session=True)
    log.close()
    return proc
