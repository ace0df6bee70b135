"""One U-Net forward, one world-model training step, one TD3+BC and one IQL update."""
from __future__ import annotations

import pytest
import torch

from conftest import (ACT_DIM, DEVICE, GPU, OBS_DIM, new_world_model, record, sync,
                      window_batcher)
from dawm_fast.rl.buffer import FIELDS, MixedSampler, Transitions
from dawm_fast.rl.fast_updates import FastIQL, FastTD3BC
from dawm_fast.rl.iql import IQL
from dawm_fast.rl.td3bc import TD3BC
from dawm_fast.world_model import WorldModelTrainer
from dawm_fast.world_model.fast_training import FastWorldModelTrainer
from dawm_fast.world_model.training import WorldModelTrainerConfig
from dawm_fast.world_model.fused_unet import fused_copy


@pytest.mark.parametrize("impl", ["reference", "fast", "compile"])
def test_unet_forward(benchmark, world_model, compiled_model, impl):
    """The 2B forward of one guided sampling step at batch 256 (512 rows)."""
    b = 512
    x = torch.randn(b, world_model.horizon, world_model.transition_dim, device=DEVICE)
    t = torch.full((b,), 4, device=DEVICE, dtype=torch.long)
    ret = torch.rand(b, device=DEVICE)
    act = torch.rand(b, ACT_DIM, device=DEVICE)
    mask = torch.ones(b, device=DEVICE)
    if impl == "fast":
        fused = fused_copy(world_model.unet)
        fn = lambda: fused(x, t, ret, act, mask)
    else:
        unet = compiled_model.unet if impl == "compile" else world_model.unet
        fn = lambda: unet(x, t, ret, act, mask)

    def run():
        with torch.no_grad():
            out = fn()
        sync()
        return out

    benchmark.pedantic(run, rounds=10 if GPU else 5, iterations=1,
                       warmup_rounds=2 if impl == "compile" else 1)
    record(benchmark, impl=impl, rows=b)


def _skip_compiled_training_on_cpu(impl: str) -> None:
    if impl == "compile" and not GPU:
        pytest.skip("torch.compile of a training step is GPU-only here: its backward and optimizer "
                    "take minutes of C++ compilation on 2 CPU cores")


@pytest.mark.parametrize("batch", [64, 256])
@pytest.mark.parametrize("impl", ["reference", "fast", "fast-bf16", "compile"])
def test_world_model_training_step(benchmark, impl, batch):
    """One step (batch draw on the device, forward, backward, Adam; EMA every 10th step):
    reference = eager WorldModelTrainer, fast = FastWorldModelTrainer (one CUDA graph per step on
    a GPU), fast-bf16 = the same under bf16 autocast (fp32 weights and Adam; off by default),
    compile = the reference trainer around torch.compile(unet)."""
    _skip_compiled_training_on_cpu(impl)
    if impl == "fast-bf16" and not GPU:
        pytest.skip("bf16 autocast is a GPU option: a CPU without bf16 matrix units runs its "
                    "GEMMs slower than fp32")
    model = new_world_model()
    if impl.startswith("fast"):
        trainer = FastWorldModelTrainer(model, WorldModelTrainerConfig(bf16=impl == "fast-bf16"))
    else:
        trainer = WorldModelTrainer(model)
        if impl == "compile":
            model.unet = torch.compile(model.unet)
    batcher = window_batcher(model, batch)

    def step():
        out = trainer.train_step(batcher)
        sync()
        return out

    benchmark.pedantic(step, rounds=20 if GPU else 15, iterations=1,
                       warmup_rounds=3 if GPU else 1)
    record(benchmark, impl=impl, batch=batch)


def _rl_sampler(n: int = 100_000) -> MixedSampler:
    g = torch.Generator().manual_seed(0)
    data = Transitions(torch.randn(n, OBS_DIM, generator=g), torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
                       torch.randn(n, generator=g), torch.randn(n, OBS_DIM, generator=g),
                       torch.zeros(n)).to(DEVICE)
    half = n // 2
    real = Transitions(*(getattr(data, f)[:half] for f in FIELDS))
    syn = Transitions(*(getattr(data, f)[half:] for f in FIELDS))
    return MixedSampler(real, syn, 0.5, 256, torch.Generator(device=DEVICE).manual_seed(1))


@pytest.mark.parametrize("impl", ["reference", "fast", "compile"])
@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_rl_update(benchmark, algo, impl):
    """Updates at batch 256 with the batch drawn from a device-resident MixedSampler (half real,
    half synthetic); timed per TD3+BC cadence of 2 updates (critic, critic + actor + targets),
    reported per update. compile = torch.compile of the reference update."""
    _skip_compiled_training_on_cpu(impl)
    classes = {"td3bc": (TD3BC, FastTD3BC), "iql": (IQL, FastIQL)}[algo]
    agent = (classes[1] if impl == "fast" else classes[0])(OBS_DIM, ACT_DIM, device=DEVICE)
    sampler = _rl_sampler()
    per_call = 2
    if impl == "fast":
        def updates():
            done = 0
            while done < per_call:
                done += agent.update_from(sampler)[1]
    else:
        update = torch.compile(agent.update) if impl == "compile" else agent.update

        def updates():
            for _ in range(per_call):
                update(sampler.sample())

    def run():
        updates()
        sync()

    benchmark.pedantic(run, rounds=50, iterations=1,
                       warmup_rounds=3 if GPU else 1)
    record(benchmark, impl=impl, algo=algo, batch=256, updates_per_call=per_call)
