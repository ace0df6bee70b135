"""bf16 autocast in world-model training ([7]): off by default, on only where its loss curve
matches fp32's.

The comparison trains two copies of one model from the same initial weights on the same batches
with the same noise draws, one in fp32 and one under bf16 autocast (fp32 weights, grads, Adam), so
step-for-step loss differences are precision alone. On a GPU the same tests run a larger model on
the device they are meant for (and the fast trainer's CUDA graph with autocast inside).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dawm_fast.world_model import (DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig,
                                   WorldModelTrainer, WorldModelTrainerConfig)
from dawm_fast.world_model.diffusion import EMAConfig
from dawm_fast.world_model.fast_training import FastWorldModelTrainer
from dawm_fast.world_model.training import WindowBatcher

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
OBS, ACT, T = 11, 3, 8
CFG = WorldModelTrainerConfig(lr=1e-3, ema=EMAConfig(start_step=10))


@pytest.fixture
def seed(request) -> int:
    s = int(np.random.SeedSequence().entropy % 2**31)
    print(f"{request.node.name}: seed {s}")
    return s


def _model(seed: int, dim: int) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    return DiffusionWorldModel(OBS, ACT, WorldModelConfig(horizon=T, unet=TemporalUNetConfig(
        dim=dim, dim_mults=(1, 2, 4)))).to(DEVICE)


def _windows(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random trajectories (a learnable signal, unlike i.i.d. noise): x0 [n, T, C]."""
    g = torch.Generator().manual_seed(seed)
    c = OBS + ACT + 1
    start = torch.rand(n, 1, c, generator=g) * 2 - 1
    drift = (torch.rand(n, 1, c, generator=g) * 2 - 1) * 0.1
    x0 = (start + drift * torch.arange(T).view(1, T, 1)).clamp(-1, 1)
    return x0.to(DEVICE), torch.rand(n, generator=g).to(DEVICE), x0[:, 0, OBS:OBS + ACT].to(DEVICE)


def _losses(trainer, batcher: WindowBatcher, steps: int) -> np.ndarray:
    return np.array([float(trainer.train_step(batcher)["loss"]) for _ in range(steps)])


def test_bf16_loss_curve_matches_fp32(seed):
    """Same init, same batches, same noise: the bf16 curve tracks the fp32 one step by step and
    ends at the same level, and both learn (the last third well below the first steps)."""
    dim, batch, steps = (64, 256, 300) if CUDA else (16, 32, 150)
    x0, ret, act = _windows(seed, 4096)
    curves = {}
    for bf16 in (False, True):
        trainer = WorldModelTrainer(_model(seed % 1000, dim), dataclasses.replace(CFG, bf16=bf16))
        batcher = WindowBatcher(x0, ret, act, batch,
                                torch.Generator(device=DEVICE).manual_seed(seed))
        curves[bf16] = _losses(trainer, batcher, steps)
    fp32, bf16 = curves[False], curves[True]
    tail = slice(2 * steps // 3, None)
    print(f"fp32 tail {fp32[tail].mean():.4f}, bf16 tail {bf16[tail].mean():.4f}, "
          f"median step difference {np.median(np.abs(bf16 - fp32) / fp32):.4f}")
    assert np.all(np.isfinite(bf16))
    assert fp32[tail].mean() < 0.9 * fp32[:10].mean() and bf16[tail].mean() < 0.9 * bf16[:10].mean()
    assert abs(bf16[tail].mean() - fp32[tail].mean()) <= 0.05 * fp32[tail].mean()
    assert np.median(np.abs(bf16 - fp32) / fp32) <= 0.05


def test_bf16_is_off_by_default_and_changes_the_forward_dtype(seed):
    """The default trainer runs fp32; with bf16 on, the U-Net's output is bf16 inside the step
    while the weights and the loss stay fp32."""
    assert WorldModelTrainerConfig().bf16 is False
    x0, ret, act = _windows(seed, 64)
    trainer = WorldModelTrainer(_model(seed % 1000, 8), dataclasses.replace(CFG, bf16=True))
    seen = []
    handle = trainer.model.unet.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    out = trainer.train_step((x0[:16], ret[:16], act[:16]))
    handle.remove()
    assert seen == [torch.bfloat16]
    assert isinstance(out["loss"], float) and np.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32
               for p in trainer.model.parameters())


def test_fast_trainer_bf16_matches_reference_bf16(seed):
    """The fast trainer under bf16 autocast (on a GPU: autocast inside the step's CUDA graph, the
    epilogue op's Triton kernels reading and writing bf16; on a CPU the fused blocks with the
    reference epilogue) against the reference trainer under bf16: losses within bf16 rounding.

    The first step starts from identical weights, so its loss is compared tightly. Later steps are
    not: Adam's first update is about lr * sign(grad), and bf16 rounding flips the sign of the
    smallest gradients, so the two trainers' weights part by a full step in a few entries and
    single later losses differ by up to 5% (measured on the CPU over 100 seeds, batch 16: step 1
    at most 0.45%, any later step at most 4.9%, the mean over 6 steps at most 1.8%). A batch of 2
    (this test's old size) put step 2 at up to 8%, which failed CI at rtol 3e-2."""
    dim, batch, steps = (32, 64, 20) if CUDA else (8, 16, 6)
    x0, ret, act = _windows(seed, 256)
    cfg = dataclasses.replace(CFG, bf16=True)
    ref = WorldModelTrainer(_model(seed % 1000, dim), cfg)
    fast = FastWorldModelTrainer(_model(seed % 1000, dim), cfg)
    gens = [torch.Generator(device=DEVICE).manual_seed(seed) for _ in range(2)]
    r = _losses(ref, WindowBatcher(x0, ret, act, batch, gens[0]), steps)
    f = _losses(fast, WindowBatcher(x0, ret, act, batch, gens[1]), steps)
    print(f"reference bf16 {r}, fast bf16 {f}")
    np.testing.assert_allclose(f[0], r[0], rtol=1e-2)
    np.testing.assert_allclose(f.mean(), r.mean(), rtol=5e-2)
    np.testing.assert_allclose(f, r, rtol=0.15)


def test_bf16_sampling_is_a_separate_graph_and_keeps_fp32_state(seed):
    """Sampling with bf16 autocast (both backends): fp32 output with the conditioning intact, the
    fp32 path unchanged after a bf16 call (the fast backend keeps one forward, and on a GPU one
    CUDA graph, per precision), and the two backends' bf16 samples mostly agree. Not compared
    tightly: the first DDIM step divides eps by sqrt(alpha_bar) (~100x at K = 5), so bf16
    rounding moves some random-weight samples across the [-1, 1] clamp (measured: up to 2.0)."""
    from dawm_fast.sampling import SamplingConfig, sample_windows
    model = _model(seed % 1000, 16).eval()
    g = torch.Generator().manual_seed(seed)
    b = 128
    s0 = (torch.rand(b, OBS, generator=g) * 2 - 1).to(DEVICE)
    a0 = (torch.rand(b, ACT, generator=g) * 2 - 1).to(DEVICE)
    ret = torch.rand(b, generator=g).to(DEVICE)

    def sample(backend, bf16):
        return sample_windows(model, s0, a0, ret, SamplingConfig(bf16=bf16),
                              torch.Generator(device=DEVICE).manual_seed(seed), backend=backend)

    fp32_before = sample("fast", False)
    out = {be: sample(be, True) for be in ("reference", "fast")}
    fp32_after = sample("fast", False)
    torch.testing.assert_close(fp32_after, fp32_before, rtol=0, atol=0)
    torch.testing.assert_close(fp32_after, sample("reference", False), rtol=0, atol=1e-3)
    for x in out.values():
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        torch.testing.assert_close(x[:, 0, :OBS], s0)
        torch.testing.assert_close(x[:, 0, OBS:OBS + ACT], a0)
    close = ((out["fast"] - out["reference"]).abs() <= 0.05).float().mean()
    assert close >= 0.9, f"only {close:.3f} of bf16 sample values within 0.05 across backends"


def test_bf16_sampling_of_x0_models_tracks_fp32(seed):
    """With an x0-predicting network (the pipeline's default) no 1/sqrt(alpha) ~ 100x factor
    multiplies the bf16 rounding, so bf16 sample values stay near fp32's. Measured on 12 such
    random-weight models: 99.9th percentile of the difference 0.08-0.31, mean <= 0.016, the single
    largest value 0.10-0.79 (a rare outlier, so not asserted); eps-predicting ones: max 1.47-1.77.
    The x0-to-eps conversion runs in fp32 after the bf16 forward."""
    from dawm_fast.sampling import SamplingConfig, sample_windows
    from dawm_fast.world_model.scheduler import DiffusionScheduleConfig
    torch.manual_seed(seed % 1000)
    model = DiffusionWorldModel(OBS, ACT, WorldModelConfig(
        horizon=T, unet=TemporalUNetConfig(dim=16, dim_mults=(1, 2, 4)),
        schedule=DiffusionScheduleConfig(prediction_type="sample"))).to(DEVICE).eval()
    g = torch.Generator().manual_seed(seed)
    b = 128
    s0 = (torch.rand(b, OBS, generator=g) * 2 - 1).to(DEVICE)
    a0 = (torch.rand(b, ACT, generator=g) * 2 - 1).to(DEVICE)
    ret = torch.rand(b, generator=g).to(DEVICE)
    for backend in ("reference", "fast"):
        x = {bf16: sample_windows(model, s0, a0, ret, SamplingConfig(bf16=bf16),
                                  torch.Generator(device=DEVICE).manual_seed(seed),
                                  backend=backend) for bf16 in (False, True)}
        diff = (x[True] - x[False]).abs()
        tail = float(torch.quantile(diff.flatten().cpu(), 0.999))
        print(f"{backend}: max {float(diff.max()):.4f}, 99.9th percentile {tail:.4f}, "
              f"mean {float(diff.mean()):.5f}")
        assert tail < 0.5 and float(diff.mean()) < 0.03
