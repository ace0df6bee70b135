"""The offline-RL training loop: updates, logged means, periodic evaluation, checkpoints.

One loop for TD3+BC and IQL on every backend: an agent's ``update_from(sampler)`` does one update
(reference) or a whole cadence of them in one call (fast, CUDA graphs) and says how many.
"""
from __future__ import annotations

from typing import Callable

import torch

from dawm_fast.rl.buffer import MixedSampler
from dawm_fast.run_io import (MetricsLog, Progress, StageCheckpoint, deferred_stop,
                              raise_if_stopped, stop_requested)

LOG_EVERY = 1_000     # updates between the logged means of the agent's losses


def train_agent(agent, sampler: MixedSampler, total: int, *, checkpoint: StageCheckpoint,
                resume: dict | None, metrics: MetricsLog, eval_every: int,
                evaluate: Callable[[int], dict], progress_every_s: float) -> int:
    """Update `agent` on batches of `sampler` until `total` updates (from `resume`, a checkpoint,
    when given); every `eval_every` updates `evaluate(step)` scores it. Returns the updates done.
    SIGINT/SIGTERM: the checkpoint is written at the next update boundary, then Interrupted."""
    step = 0
    if resume is not None:
        def restore(ck):
            nonlocal step
            agent.load_state_dict(ck["agent"])
            sampler.load_state_dict(ck["sampler"])
            step = int(ck["step"])
            if not 0 <= step <= total:
                raise ValueError(f"update {step} is outside [0, {total}]")
        checkpoint.restore(resume, restore)
        metrics.truncate_after("rl", step)
        print(f"[rl] resumed at update {step:,}", flush=True)
    prog = Progress("rl", total, step, progress_every_s, unit="updates")
    last_score = float("nan")
    acc: dict[str, list] = {}
    with deferred_stop():     # SIGINT/SIGTERM: checkpoint at the next update boundary, stop
        while step < total:
            prev = step
            # a whole cadence per call where it fits (fast path), else one update
            log, n = (agent.update_from(sampler) if total - step >= agent.updates_per_call
                      else (agent.update(sampler.sample()), 1))
            step += n
            crossed = lambda every: step // every != prev // every or step == total
            for k, v in log.items():
                acc.setdefault(k, []).append(v)
            if crossed(LOG_EVERY):
                means = {k: float(torch.stack(v).mean()) for k, v in acc.items()}
                checkpoint.check_finite({f"the {k}": v for k, v in means.items()}, step)
                metrics.log("rl", step, **means)
                acc = {}
            if crossed(eval_every):
                checkpoint.check_finite({"agent": agent.state_dict()}, step)
                last_score = evaluate(step)["score_mean"]
            prog.update(step, score=last_score)
            if crossed(checkpoint.every) or stop_requested():
                checkpoint.save({"agent": agent.state_dict(), "sampler": sampler.state_dict(),
                                 "step": step}, step)
                raise_if_stopped()
    return step
