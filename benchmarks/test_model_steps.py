"""One U-Net forward, one world-model training step, one TD3+BC and one IQL update."""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE, OBS_DIM, ACT_DIM, GPU, record, sync
from dawm_fast.rl.buffer import Transitions
from dawm_fast.rl.iql import IQL
from dawm_fast.rl.td3bc import TD3BC
from dawm_fast.world_model import (DiffusionWorldModel, WorldModelConfig, WorldModelTrainer)
from dawm_fast.world_model.fused_unet import fused_unet_forward
from conftest import unet_config


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
        fn = lambda: fused_unet_forward(world_model.unet, x, t, ret, act, mask)
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


@pytest.mark.parametrize("batch", [64, 256])
def test_world_model_training_step(benchmark, batch):
    """Reference eager step (forward, backward, Adam, EMA); the fast training path is [7]."""
    torch.manual_seed(0)
    model = DiffusionWorldModel(OBS_DIM, ACT_DIM, WorldModelConfig(unet=unet_config())).to(DEVICE)
    trainer = WorldModelTrainer(model)
    x0 = torch.rand(batch, model.horizon, model.transition_dim, device=DEVICE) * 2 - 1
    ret = torch.rand(batch, device=DEVICE)
    act = torch.rand(batch, ACT_DIM, device=DEVICE) * 2 - 1

    def step():
        out = trainer.train_step((x0, ret, act))
        sync()
        return out

    benchmark.pedantic(step, rounds=10 if GPU else 5, iterations=1, warmup_rounds=1)
    record(benchmark, impl="reference", batch=batch)


def _batch(n=256):
    g = torch.Generator().manual_seed(0)
    return Transitions.from_numpy(torch.randn(n, OBS_DIM, generator=g).numpy(),
                                  torch.rand(n, ACT_DIM, generator=g).numpy() * 2 - 1,
                                  torch.randn(n, generator=g).numpy(),
                                  torch.randn(n, OBS_DIM, generator=g).numpy(),
                                  torch.zeros(n).numpy()).to(DEVICE)


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_rl_update(benchmark, algo):
    """One update at batch 256 (TD3+BC: the average over its critic/actor cadence)."""
    agent = TD3BC(OBS_DIM, ACT_DIM, device=DEVICE) if algo == "td3bc" else \
        IQL(OBS_DIM, ACT_DIM, device=DEVICE)
    batch = _batch()

    def update():
        out = agent.update(batch)
        sync()
        return out

    benchmark.pedantic(update, rounds=50 if GPU else 20, iterations=2, warmup_rounds=2)
    record(benchmark, impl="reference", algo=algo, batch=256)
