"""Where the fast world-model step and the fast sampler spend their GPU time.

    python benchmarks/profile_step.py [--out DIR] [--no-tables]

1. Step time (CUDA events, median of 30 graph replays) of ``FastWorldModelTrainer`` on the
   benchmark model at batch 256 and 64, and at 256 with an earlier form of one part
   (``TRAINING_VARIANTS``), side by side.
2. A kernel table of the step at batch 256 (torch.profiler over graph replays): kernels per step,
   GPU time per step by kernel and by kind (GEMM, conv, Triton, optimizer, ...), and kernel time
   over wall time (near 1: the GPU is never idle, so fewer or faster kernels are the way on; far
   under 1: gaps between kernels).
3. Fast sampling throughput at batch 4096 and 256 for the current forms and alternatives
   (``SAMPLING_VARIANTS``: which horizons run as banded GEMMs, the inference cache), and the
   kernel table at 4096.

Prints tables; writes ``profile_step.json`` to --out. On a CPU it runs the same code on the
benchmark's CPU model (a check that the script works, not a measurement). Measured with it:
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import (DEVICE, GPU, device_name, new_world_model, sampling_inputs,  # noqa: E402
                      window_batcher)
from dawm_fast.sampling import SamplingConfig, sample_windows  # noqa: E402
from dawm_fast.world_model import fused_unet  # noqa: E402
from dawm_fast.world_model.fast_training import FastWorldModelTrainer  # noqa: E402
from dawm_fast.world_model.training import WorldModelTrainerConfig  # noqa: E402

KINDS = (("optimizer", ("multi_tensor", "adam", "foreach")),
         ("triton", ("triton", "groupnorm_mish")),
         ("conv", ("conv", "cudnn", "implicit", "wgrad", "dgrad", "fprop")),
         ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90", "ampere")),
         ("reduction", ("reduce",)),
         ("copy", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter")),
         ("elementwise", ("elementwise", "vectorized", "unrolled")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def timed(fn, n: int) -> float:
    """Median milliseconds of fn over n calls (events on a GPU, host clock on a CPU)."""
    times = []
    for _ in range(n):
        if GPU:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def kernel_table(fn, steps: int, wall_ms: float, top: int = 25) -> dict:
    """Profile `steps` calls of fn; aggregate device kernels by name, per call."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if GPU:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if GPU:
            torch.cuda.synchronize()
    per_name = collections.defaultdict(lambda: [0, 0.0])
    want = torch.autograd.DeviceType.CUDA if GPU else torch.autograd.DeviceType.CPU
    for e in prof.events():
        if e.device_type != want or (not GPU and e.cpu_parent is not None):
            continue
        us = e.time_range.elapsed_us() if GPU else e.cpu_time
        per_name[e.name][0] += 1
        per_name[e.name][1] += us / 1e3
    rows = sorted(((n, c / steps, ms / steps) for n, (c, ms) in per_name.items()),
                  key=lambda r: -r[2])
    by_kind = collections.defaultdict(lambda: [0.0, 0.0])
    for n, c, ms in rows:
        by_kind[kind_of(n)][0] += c
        by_kind[kind_of(n)][1] += ms
    total_ms = sum(r[2] for r in rows)
    return {"kernels_per_call": sum(r[1] for r in rows), "kernel_ms_per_call": total_ms,
            "wall_ms": wall_ms, "busy_fraction": total_ms / wall_ms if wall_ms else None,
            "by_kind": {k: {"kernels": c, "ms": ms} for k, (c, ms) in
                        sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
            "top": [{"name": n[:120], "count": c, "ms": ms} for n, c, ms in rows[:top]]}


def print_table(title: str, table: dict) -> None:
    print(f"\n== {title}: {table['kernels_per_call']:.0f} kernels, "
          f"{table['kernel_ms_per_call']:.3f} ms of kernels per call, wall {table['wall_ms']:.3f} ms"
          f" (busy {table['busy_fraction']:.2f})")
    for k, v in table["by_kind"].items():
        print(f"   {k:12s} {v['kernels']:7.0f} kernels {v['ms']:8.3f} ms")
    for r in table["top"]:
        print(f"   {r['ms']:8.3f} ms {r['count']:6.1f}x  {r['name']}")


def world_model_step(batch: int):
    """The fast trainer's step on the benchmark model, warmed up (graph captured on a GPU)."""
    trainer = FastWorldModelTrainer(new_world_model(), WorldModelTrainerConfig())
    batcher = window_batcher(trainer.model, batch)
    step = lambda: trainer.train_step(batcher)
    for _ in range(3):
        step()
    return step


def _banded_through(max_t):
    original = fused_unet.banded_max_horizon

    def horizon(device, kernel_size, training):
        return original(device, kernel_size, training) if training else max_t
    return horizon


# name -> {attribute of fused_unet (or of a class of it): replacement}; each variant builds a fresh model, so no
# CUDA graph of another variant is reused.
TRAINING_VARIANTS = {
    "fast": {},
    "fast, no banded GEMM": {"banded_max_horizon": lambda *a: 0},
    "fast b64": {},
}
SAMPLING_VARIANTS = {
    "fast": {},
    "fast, banded matrix not cached": {"FusedConv1dBlock.banded_matrix": lambda self, t: (
        fused_unet.banded_weight(self.conv.weight, self.conv.padding[0], t))},
    "fast, banded up to T=4": {"banded_max_horizon": _banded_through(4)},
    "fast, banded up to T=2": {"banded_max_horizon": _banded_through(2)},
}


def _owner(name: str):
    """(object, attribute) for "attr" or "Class.attr" of fused_unet."""
    *cls, attr = name.split(".")
    return (getattr(fused_unet, cls[0]) if cls else fused_unet), attr


@contextlib.contextmanager
def patched(attrs: dict):
    saved = {k: getattr(*_owner(k)) for k in attrs}
    for k, v in attrs.items():
        setattr(*_owner(k), v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(*_owner(k), v)


def sampling_call(b: int):
    model = new_world_model().eval()
    g = torch.Generator(device=DEVICE)
    s0, a0, ret = sampling_inputs(b)
    cfg = SamplingConfig(batch_size=b)

    def sample():
        g.manual_seed(0)
        return sample_windows(model, s0, a0, ret, cfg, g, backend="fast")

    sample()
    return sample, b * (model.horizon - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--reps", type=int, default=30 if GPU else 3)
    p.add_argument("--no-tables", dest="tables", action="store_false",
                   help="step times only, no kernel tables")
    args = p.parse_args()
    if GPU:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    big = 256 if GPU else 64
    result = {"device": device_name(), "torch": torch.__version__, "step_ms": {}}
    print("device:", result["device"])

    for name, patch in TRAINING_VARIANTS.items():
        batch = 64 if name.endswith("b64") else big
        t0 = time.perf_counter()
        with patched(patch):
            step = world_model_step(batch)
            ms = timed(step, args.reps)
            result["step_ms"][name] = ms
            print(f"{name:40s} {ms:8.3f} ms/step   (set-up + timing {time.perf_counter() - t0:.0f} s)")
            if name == "fast" and args.tables:
                result["world_model_step"] = kernel_table(step, 5, ms)
                print_table(f"world-model step, batch {big}", result["world_model_step"])
        del step
        if GPU:
            torch.cuda.empty_cache()

    result["sampling_transitions_per_s"] = {}
    for b in (4096, 256) if GPU else (64,):
        for name, patch in SAMPLING_VARIANTS.items():
            with patched(patch):
                sample, per_call = sampling_call(b)
                ms = timed(sample, 5)
                rate = per_call / ms * 1e3
                result["sampling_transitions_per_s"][f"{name} b{b}"] = rate
                print(f"sampling {name:31s} b{b:<5d} {ms:8.2f} ms/call {rate:12,.0f} transitions/s")
                if name == "fast" and b == (4096 if GPU else 64) and args.tables:
                    result["sampling"] = kernel_table(sample, 2, ms)
                    print_table(f"fast sampling, batch {b}", result["sampling"])
            del sample
            if GPU:
                torch.cuda.empty_cache()

    with open(os.path.join(args.out, "profile_step.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
