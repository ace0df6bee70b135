"""World models whose network predicts the clean window x0 ("sample") instead of the noise: the
one conversion point (``DiffusionWorldModel.eps_from_output``), the loss target, and every
sampler agreeing with the reference loop."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dawm_fast.sampling import SamplingConfig, sample_windows
from dawm_fast.world_model import (DDIMScheduler, DiffusionWorldModel, TemporalUNetConfig,
                                   WorldModelConfig)
from dawm_fast.world_model.scheduler import DiffusionScheduleConfig

torch.set_num_threads(1)

OBS, ACT, T = 3, 2, 8
C = OBS + ACT + 1


def make_model(prediction: str = "sample", seed: int = 0) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    return DiffusionWorldModel(OBS, ACT, WorldModelConfig(
        horizon=T, unet=TemporalUNetConfig(dim=8, dim_mults=(1, 2), n_groups=2),
        schedule=DiffusionScheduleConfig(prediction_type=prediction))).eval()


def inputs(b: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(b, OBS, generator=gen) * 2 - 1, torch.rand(b, ACT, generator=gen) * 2 - 1,
            torch.rand(b, generator=gen))


class ConstantNet(nn.Module):
    """A 'network' whose output is always ``y`` [B, T, C] (stacked for a 2B guidance batch)."""

    def __init__(self, y: torch.Tensor):
        super().__init__()
        self.y = y
        self.anchor = nn.Parameter(torch.zeros(()))   # samplers read the device from parameters

    def forward(self, x, t, returns, actions, returns_mask=None):
        return self.y.repeat(x.shape[0] // self.y.shape[0], 1, 1)


def test_unknown_prediction_type_is_rejected():
    with pytest.raises(ValueError, match="prediction_type 'v'.*'epsilon', 'sample'"):
        DDIMScheduler(DiffusionScheduleConfig(prediction_type="v"))


def test_epsilon_output_passes_through():
    m = make_model("epsilon")
    out, x = torch.randn(2, T, C), torch.randn(2, T, C)
    assert m.eps_from_output(out, x, torch.tensor([4, 0])) is out


@pytest.mark.parametrize("level", range(5))
def test_scheduler_recovers_the_predicted_x0(level):
    """eps_from_output then the scheduler's own x0 formula gives back the network's x0, at every
    level, including the noisiest one where sqrt(alpha) ~ 0.01 magnifies rounding ~100x."""
    m = make_model()
    gen = torch.Generator().manual_seed(level)
    x0_hat = (torch.rand(6, T, C, generator=gen) * 2 - 1) * 0.99        # inside the clip range
    x_t = torch.randn(6, T, C, generator=gen)
    eps = m.eps_from_output(x0_hat, x_t, torch.full((6,), level))
    sch = DDIMScheduler(m.schedule_config)
    steps = sch.set_timesteps(5)
    out = sch.step(eps, steps.index(level), x_t)
    assert_close(out.pred_original_sample, x0_hat, rtol=0, atol=1e-4 if level == 4 else 1e-5)


def test_sample_loss_targets_x0():
    m = make_model()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, T, C, generator=gen) * 2 - 1
    g, a0 = torch.rand(8, generator=gen), x0[:, 0, OBS:OBS + ACT].clone()

    def loss(model, forward):
        return model.loss(x0, g, a0, torch.Generator().manual_seed(5), forward=forward).item()

    oracle = ConstantNet(x0)
    assert loss(m, oracle) == 0.0
    mask = m.loss_mask
    zero = ConstantNet(torch.zeros_like(x0))
    assert loss(m, zero) == pytest.approx(float((x0 ** 2 * mask).sum() / (mask.sum() * 8)),
                                          rel=1e-6)
    assert loss(make_model("epsilon"), oracle) > 0.1     # an eps-net is scored against the noise


def test_constant_x0_network_samples_its_output():
    """DDIM's last step (alpha_prev = 1) returns the predicted x0; with a network that always
    predicts y, every sampler (reference loop, C++ loop when built) must end at y, conditioned."""
    m = make_model()
    b = 4
    s0, a0, g = inputs(b, seed=2)
    y = torch.rand(b, T, C, generator=torch.Generator().manual_seed(9)) * 2 - 1
    m.unet = ConstantNet(y)
    want = m.conditioning(y, s0, a0)
    for eta in (0.0, 0.5):
        cfg = SamplingConfig(eta=eta)
        got = sample_windows(m, s0, a0, g, cfg, torch.Generator().manual_seed(3))
        assert_close(got, want, rtol=0, atol=1e-4)
    from dawm_fast.ops import has_ops
    if has_ops():
        got = sample_windows(m, s0, a0, g, SamplingConfig(), torch.Generator().manual_seed(3),
                             backend="fast")
        assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("b,eta", [(1, 0.0), (5, 0.5)])
def test_fast_backend_matches_reference_for_x0_models(b, eta):
    m = make_model()
    s0, a0, g = inputs(b, seed=b)
    cfg = SamplingConfig(eta=eta)
    want = sample_windows(m, s0, a0, g, cfg, torch.Generator().manual_seed(3),
                          backend="reference")
    got = sample_windows(m, s0, a0, g, cfg, torch.Generator().manual_seed(3), backend="fast")
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    # not the all-clipped corner: the samples carry the network's values
    assert (got[:, 1:, :OBS].abs() < 0.999).float().mean() > 0.5


def test_cli_sets_the_prediction_type():
    from dawm_fast.train import build_config, parse_args
    cfg = build_config(parse_args(["--preset", "smoke", "--device", "cpu",
                                   "--prediction-type", "epsilon"]))
    assert cfg.world_model.schedule.prediction_type == "epsilon"
