"""Sampling throughput: synthetic transitions per second, reference vs fast (fp32, and bf16 on a
GPU) vs torch.compile."""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE, record, sampling_inputs, skip_large_batch_on_cpu, sync
from dawm_fast.sampling import SamplingConfig, sample_windows

IMPLS = ("reference", "fast", "fast-bf16", "compile")


@pytest.mark.parametrize("batch", [64, 256, 1024, 4096])
@pytest.mark.parametrize("impl", IMPLS)
def test_sampling_throughput(benchmark, world_model, compiled_model, impl, batch):
    skip_large_batch_on_cpu(batch)
    if impl == "fast-bf16" and DEVICE.type != "cuda":
        pytest.skip("bf16 autocast is a GPU option: a CPU without bf16 matrix units runs its "
                    "GEMMs slower than fp32")
    g = torch.Generator(device=DEVICE)
    s0, a0, ret = sampling_inputs(batch)
    cfg = SamplingConfig(batch_size=batch, bf16=impl == "fast-bf16")
    model = compiled_model if impl == "compile" else world_model
    backend = "fast" if impl.startswith("fast") else "reference"

    def sample():
        g.manual_seed(0)
        x = sample_windows(model, s0, a0, ret, cfg, g, backend=backend)
        sync()
        return x

    benchmark.pedantic(sample, rounds=5 if DEVICE.type == "cuda" else 3, iterations=1,
                       warmup_rounds=2 if impl == "compile" else 1)
    per_call = batch * (world_model.horizon - 1)
    # no stats under --benchmark-disable (each benchmark runs once, as a test)
    rate = per_call / benchmark.stats.stats.mean if benchmark.stats is not None else None
    record(benchmark, impl=impl, batch=batch, transitions_per_call=per_call,
           transitions_per_s=rate, sampling_steps=cfg.n_sampling_steps)
