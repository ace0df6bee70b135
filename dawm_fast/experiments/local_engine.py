"""The default engine: N local worker processes, world models before the runs that read them."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from dawm_fast.experiments.grid import Job, JobOutcome, SweepSummary, error_line
from dawm_fast.experiments.runner import BUSY_EXIT, start_job
from dawm_fast.run_io import format_duration

# a run stopped mid-stage leaves one of these; a job that starts from one runs only part of itself
MID_STAGE_CHECKPOINTS = ("world_model_ckpt.pt", "rl_ckpt.pt")

BUSY_RETRY_S = 10.0   # a job whose directory another process owns is retried after this


def run_local(jobs: list[Job], sweep_dir: Path, workers: int, threads: int,
              gpus: int = 0, gpus_per_run: int = 1, progress_every_s: float = 30.0,
              expected_minutes: dict[str, float] | None = None) -> SweepSummary:
    """Run the jobs on `workers` local processes. With `gpus` > 0 each job gets its own GPUs
    (CUDA_VISIBLE_DEVICES): a world model `gpus_per_run` of them (data-parallel under torchrun
    when more than one), an RL run one. `expected_minutes` (by job name) drives the ETA until
    jobs of a kind end here; then their measured mean does."""
    summary = SweepSummary()
    outcomes = {}
    pending = []
    for job in jobs:
        if job.finished(sweep_dir):
            outcomes[job.name] = JobOutcome(job, "skipped")
        else:
            pending.append(job)
    running: dict[str, tuple[Job, object, float]] = {}
    resumed: set[str] = set()
    free_gpus = list(range(gpus))
    held: dict[str, list[int]] = {}
    retry_at: dict[str, float] = {}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t_start, t_print = time.time(), 0.0
    n_total = len(pending)
    print(f"[sweep] {len(jobs)} jobs: {len(jobs) - len(pending)} finished earlier, "
          f"{len(pending)} to run on {workers} local worker(s)", flush=True)
    try:
        while (pending or running) and stop["signal"] is None:
            for name, (job, proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                free_gpus = sorted(free_gpus + held.pop(name, []))
                if rc == BUSY_EXIT:
                    retry_at[name] = time.time() + BUSY_RETRY_S
                    pending.append(job)
                    print(f"[sweep] {name}: its directory is in use by another process; "
                          f"retrying in {BUSY_RETRY_S:.0f} s", flush=True)
                elif rc == 0:
                    outcomes[name] = JobOutcome(job, "done", time.time() - t0,
                                                resumed=name in resumed)
                    print(f"[sweep] done {name} ({format_duration(time.time() - t0)})", flush=True)
                else:
                    err = error_line(sweep_dir / job.log_name)
                    outcomes[name] = JobOutcome(job, "failed", time.time() - t0, err)
                    print(f"[sweep] FAILED {name} (exit {rc}): {err}", flush=True)
            # a run whose world model failed cannot run; it fails with that reason
            for job in list(pending):
                dep = outcomes.get(job.depends_on) if job.depends_on else None
                if dep is not None and dep.status == "failed":
                    pending.remove(job)
                    outcomes[job.name] = JobOutcome(job, "failed",
                                                    error=f"its world model {dep.job.name} "
                                                          f"failed: {dep.error}")
            now = time.time()
            for job in list(pending):
                if len(running) >= workers:
                    break
                dep_ok = job.depends_on is None or (
                    job.depends_on in outcomes and outcomes[job.depends_on].status != "failed")
                if not dep_ok or retry_at.get(job.name, 0) > now:
                    continue
                need = (gpus_per_run if job.kind == "wm" else 1) if gpus else 0
                if need > len(free_gpus):
                    continue
                pending.remove(job)
                if any((sweep_dir / job.name / f).exists() for f in MID_STAGE_CHECKPOINTS):
                    resumed.add(job.name)
                mine, free_gpus = free_gpus[:need], free_gpus[need:]
                held[job.name] = mine
                running[job.name] = (job, start_job(job, sweep_dir, threads,
                                                    mine if gpus else None, len(mine)), now)
            if now - t_print >= progress_every_s:
                t_print = now
                _print_progress(outcomes, running, pending, n_total, t_start,
                                ETA(expected_minutes or {}, outcomes, workers))
            time.sleep(0.2)
        if stop["signal"] is not None:
            _stop_running(running)
            raise KeyboardInterrupt
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    summary.outcomes = [outcomes[j.name] for j in jobs if j.name in outcomes]
    return summary


def _stop_running(running: dict) -> None:
    """Each run gets SIGTERM (it checkpoints and exits), then up to 60 s to do so."""
    for _job, proc, _t0 in running.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 60
    for _job, proc, _t0 in running.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except Exception:  # noqa: BLE001 - a run that will not stop is killed
            proc.kill()


class ETA:
    """Time left: each job's expected minutes, less what a running job has already run, over the
    workers. The expectations are the plan's, scaled by how jobs of the same kind that ended here
    ran against theirs (a machine slower than the plan's, or busier): a ratio, not the ended
    jobs' own minutes, because a world model seeded from a trained one ends in a tenth of a
    whole one's time. A job resumed from a mid-stage checkpoint teaches nothing: it ran an
    unknown part of itself. A rate of jobs per hour would not do: world models and RL runs of one sweep
    differ by 2-10x."""

    def __init__(self, expected: dict[str, float], outcomes: dict, workers: int):
        self.expected, self.workers = expected, max(workers, 1)
        ratios: dict[str, list[float]] = {}
        for o in outcomes.values():
            planned = expected.get(o.job.name)
            if o.status == "done" and planned and not o.resumed:
                ratios.setdefault(o.job.timing_kind, []).append(o.wall_s / 60 / planned)
        self.scale = {k: sum(v) / len(v) for k, v in ratios.items()}

    def minutes(self, job: Job) -> float:
        return self.expected.get(job.name, 10.0) * self.scale.get(job.timing_kind, 1.0)

    def left_s(self, pending: list[Job], running: dict, now: float) -> float:
        left = sum(self.minutes(j) for j in pending)
        for job, _proc, t0 in running.values():
            left += max(self.minutes(job) - (now - t0) / 60, 0.0)
        return 60 * left / self.workers


def _print_progress(outcomes: dict, running: dict, pending: list[Job], n_total: int,
                    t_start: float, eta_of: ETA) -> None:
    ran = [o for o in outcomes.values() if o.status != "skipped"]
    n_done = len(ran)
    now = time.time()
    elapsed = now - t_start
    eta = format_duration(eta_of.left_s(pending, running, now))
    failed = sum(o.status == "failed" for o in ran)
    print(f"[sweep] {n_done}/{n_total} jobs ended ({failed} failed), {len(running)} running: "
          f"{', '.join(sorted(running)) or '-'}  elapsed {format_duration(elapsed)}  ETA {eta}",
          flush=True)
