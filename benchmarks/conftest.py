"""Shared set-up for the benchmarks: the device, the model under test and its inputs.

On a GPU the model is Decision Diffuser's size (dim 128, mults 1-4-8, ~61M parameters for
walker2d), the `paper` preset's; on a CPU it is the `cpu` preset's (dim 32, mults 1-2-4), the size
a CPU user runs; either way with the pipeline's world-model settings (x0-prediction). Speeds are
reported as ratios measured side by side in one run.
"""
from __future__ import annotations

import copy

import pytest
import torch

from dawm_fast.config import pipeline_world_model
from dawm_fast.world_model import DiffusionWorldModel, TemporalUNetConfig
from dawm_fast.world_model.training import WindowBatcher

OBS_DIM, ACT_DIM = 17, 6          # walker2d
GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
CPU_ONLY_BATCHES = (64, 256)      # larger batches take minutes per round on 2 CPU cores
if GPU:
    # Every implementation on a GPU runs with TF32 matmuls/convolutions (what a user would turn
    # on for speed); the parity tests compare in strict fp32 instead.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def unet_config() -> TemporalUNetConfig:
    return TemporalUNetConfig() if GPU else TemporalUNetConfig(dim=32, dim_mults=(1, 2, 4))


def device_name() -> str:
    if GPU:
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


def new_world_model() -> DiffusionWorldModel:
    """The benchmark world model (seeded), on DEVICE, in training mode."""
    torch.manual_seed(0)
    return DiffusionWorldModel(OBS_DIM, ACT_DIM, pipeline_world_model(unet=unet_config())).to(
        DEVICE)


def window_batcher(model: DiffusionWorldModel, batch: int, n: int = 4096) -> WindowBatcher:
    """n random training windows on DEVICE (from torch's global generator) and a seeded batch
    generator: what a training step draws its batch from."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    return WindowBatcher(torch.rand(n, model.horizon, model.transition_dim, device=DEVICE) * 2 - 1,
                         torch.rand(n, device=DEVICE),
                         torch.rand(n, ACT_DIM, device=DEVICE) * 2 - 1, batch, gen)


def sampling_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized starts s0 [B, obs], a0 [B, act] and the return g [B] of a sampling call."""
    s0 = torch.rand(batch, OBS_DIM, device=DEVICE) * 2 - 1
    a0 = torch.rand(batch, ACT_DIM, device=DEVICE) * 2 - 1
    return s0, a0, torch.full((batch,), 0.9, device=DEVICE)


@pytest.fixture(scope="session")
def world_model() -> DiffusionWorldModel:
    return new_world_model().eval()


@pytest.fixture(scope="session")
def compiled_model(world_model) -> DiffusionWorldModel:
    """The reference model with its U-Net under torch.compile: the strongest thing a user could
    do without this package (reduce-overhead = CUDA graphs on a GPU; default mode on a CPU).
    Same weights; the original model is left untouched."""
    m = copy.copy(world_model)
    m._modules = dict(world_model._modules)      # own module table: do not rebind the original's
    m.unet = torch.compile(world_model.unet, mode="reduce-overhead" if GPU else "default")
    return m


def skip_large_batch_on_cpu(batch: int) -> None:
    if not GPU and batch not in CPU_ONLY_BATCHES:
        pytest.skip(f"batch {batch} is GPU-only: on 2 CPU cores one round takes minutes")


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def record(benchmark, **info) -> None:
    benchmark.extra_info.update(device=device_name(), torch=torch.__version__, **info)
