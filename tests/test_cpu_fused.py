"""The CPU fast path of the fused U-Net: the ``dawm_fast::groupnorm_mish`` CPU op, the
short-horizon convolution form, and the fused blocks (``fused_copy``) /
``sample_windows(backend="fast")`` against the plain-PyTorch modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dawm_fast import ops
from dawm_fast.sampling import SamplingConfig, sample_windows
from dawm_fast.world_model import DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig
from dawm_fast.world_model.fused_unet import FusedConv1dBlock, fuse_blocks_, fused_copy
from dawm_fast.world_model.unet import Conv1dBlock
from dawm_fast.kernels.groupnorm_mish import groupnorm_mish_reference

if not ops.has_ops():
    pytest.skip("the dawm_fast C++ extension is unavailable", allow_module_level=True)

torch.set_num_threads(1)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ---- groupnorm_mish CPU op ---------------------------------------------------------------------
CASES = [   # (B, C, G, T)
    (2, 24, 8, 8),      # 3 channels per group
    (1, 40, 8, 4),      # 5 channels per group, batch 1
    (3, 40, 8, 2),
    (1, 16, 8, 8),
    (2, 6, 2, 3),       # T not a power of two
    (4, 128, 8, 8),
    (2, 512, 8, 4),
    (2, 1024, 8, 2),
    (1, 9, 3, 1),
]


@pytest.mark.parametrize("b,c,g,t", CASES)
@pytest.mark.parametrize("with_emb,with_res", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_groupnorm_mish_op_matches_reference(b, c, g, t, with_emb, with_res):
    gen = torch.Generator().manual_seed(b * 1000 + c * 10 + t)
    x = 3 * torch.randn(b, c, t, generator=gen) + 0.5
    bias, gamma, beta = (torch.randn(c, generator=gen) for _ in range(3))
    emb = torch.randn(b, c, generator=gen) if with_emb else None
    res = torch.randn(b, c, t, generator=gen) if with_res else None
    got = ops.groupnorm_mish(x, bias, gamma, beta, g, 1e-5, emb, res)
    assert got.shape == x.shape and got.is_contiguous()
    assert_close(got, groupnorm_mish_reference(x, bias, gamma, beta, g, 1e-5, emb, res))


def test_groupnorm_mish_op_mish_range():
    """Mish over [-100, 100] follows torch.nn.functional.mish, including the z > 20 and very
    negative tails: groups of the two channels (z, -z), T = 1, normalize to (+-1) and gamma = |z|
    scales back to (z, -z)."""
    z = torch.linspace(-100, 100, 20000)                     # even count: 0 is not a sample
    x = torch.stack([z, -z], dim=1).reshape(1, -1, 1)        # [1, 2N, 1]
    c = x.shape[1]
    # Groups of 2 channels (z, -z): mean 0, var z^2; scale gamma = |z| undoes the normalization.
    gamma = torch.stack([z.abs(), z.abs()], dim=1).reshape(-1)
    got = ops.groupnorm_mish(x, torch.zeros(c), gamma, torch.zeros(c), c // 2, 0.0, None, None)
    want = F.mish(F.group_norm(x, c // 2, gamma, torch.zeros(c), 0.0))
    assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_groupnorm_mish_op_rejects_bad_arguments():
    x, v = torch.randn(2, 16, 4), torch.randn(16)
    with pytest.raises(RuntimeError, match="bias must be \\[C\\]"):
        ops.groupnorm_mish(x, torch.randn(8), v, v, 8)
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        ops.groupnorm_mish(x, v, v, v, 3)
    with pytest.raises(RuntimeError, match="conv_out must be contiguous"):
        ops.groupnorm_mish(x.transpose(1, 2).contiguous().transpose(1, 2), v, v, v, 8)
    with pytest.raises(RuntimeError, match="emb_add must be \\[B, C\\]"):
        ops.groupnorm_mish(x, v, v, v, 8, emb_add=torch.randn(2, 8))
    with pytest.raises(RuntimeError, match="residual must be float32"):
        ops.groupnorm_mish(x, v, v, v, 8, residual=torch.randn(2, 16, 4, dtype=torch.float64))


# ---- short-horizon convolutions ----------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,t", [(32, 32, 8), (32, 64, 4), (64, 128, 2), (256, 64, 2),
                                        (128, 512, 4), (24, 40, 1), (7, 9, 3)])
@pytest.mark.parametrize("grad", [False, True])
def test_short_horizon_conv_matches_conv1d(cin, cout, t, grad):
    """FusedConv1dBlock.conv_forward (banded GEMM below the device's horizon limit, else
    F.conv1d) on the CPU, for inference and under autograd."""
    gen = torch.Generator().manual_seed(cin + cout + t)
    x = torch.randn(5, cin, t, generator=gen)
    block = FusedConv1dBlock(Conv1dBlock(cin, cout, 5, 1))
    conv = block.conv
    want = F.conv1d(x, conv.weight, None, 1, 2)
    scale = want.abs().max()
    with torch.set_grad_enabled(grad):
        got = block.conv_forward(x)
    assert got.shape == want.shape and got.requires_grad == grad
    assert_close(got.detach() / scale, want.detach() / scale, rtol=0, atol=1e-5)


# ---- fused U-Net forward / fast sampling ------------------------------------------------------
def unet_inputs(unet, b: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = unet.transition_dim
    return (torch.randn(b, unet.horizon, c, generator=gen),
            torch.randint(0, 100, (b,), generator=gen),
            torch.rand(b, generator=gen), torch.randn(b, unet.act_dim, generator=gen),
            torch.rand(b, generator=gen) > 0.3)


@pytest.mark.parametrize("dim,mults,horizon,b", [(8, (1, 2), 8, 3), (32, (1, 2, 4), 8, 2),
                                                  (16, (1, 2, 2, 4), 8, 1)])
def test_fused_unet_cpu_forward_matches_module(dim, mults, horizon, b):
    torch.manual_seed(dim)
    unet = DiffusionWorldModel(4, 3, WorldModelConfig(
        horizon=horizon, unet=TemporalUNetConfig(dim=dim, dim_mults=mults))).eval().unet
    args = unet_inputs(unet, b, seed=dim + b)
    with torch.no_grad():
        assert_close(fused_copy(unet)(*args), unet(*args), rtol=1e-4, atol=1e-4)


def test_fuse_blocks_swaps_in_place_with_the_same_state():
    """fuse_blocks_ replaces every block in place: the same parameter objects, the same
    state_dict keys and values, the same function; a fused module loads a reference
    state_dict and vice versa."""
    torch.manual_seed(0)
    unet = DiffusionWorldModel(4, 3, WorldModelConfig(
        horizon=8, unet=TemporalUNetConfig(dim=8, dim_mults=(1, 2), n_groups=2))).eval().unet
    params, state = list(unet.parameters()), unet.state_dict()
    args = unet_inputs(unet, 2, seed=3)
    with torch.no_grad():
        want = unet(*args)
        assert fuse_blocks_(unet) is unet
        got = unet(*args)
    assert type(unet.downs[0][0]).__name__ == "FusedResidualBlock"
    assert type(unet.final_block).__name__ == "FusedConv1dBlock"
    assert all(p is q for p, q in zip(unet.parameters(), params))
    fused_state = unet.state_dict()
    assert list(fused_state) == list(state)
    assert all(torch.equal(fused_state[k], state[k]) for k in state)
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    unet.load_state_dict(state)


def test_fused_unet_cpu_forward_keeps_gradients():
    """With a gradient needed, the CPU path stays the differentiable reference."""
    torch.manual_seed(0)
    unet = DiffusionWorldModel(4, 3, WorldModelConfig(
        horizon=8, unet=TemporalUNetConfig(dim=8, dim_mults=(1, 2), n_groups=2))).unet
    args = unet_inputs(unet, 2, seed=5)
    out = fused_copy(unet)(*args)
    assert out.requires_grad
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


@pytest.mark.parametrize("b,eta", [(1, 0.0), (4, 0.5)])
def test_fast_backend_matches_reference_cpu(untrained_sampling_model, b, eta):
    m = untrained_sampling_model(4, 3, dim=8, dim_mults=(1, 2), n_groups=2)
    gen = torch.Generator().manual_seed(b)
    s0, a0, g = torch.rand(b, 4, generator=gen), torch.rand(b, 3, generator=gen), torch.rand(b)
    cfg = SamplingConfig(eta=eta)
    want = sample_windows(m, s0, a0, g, cfg, torch.Generator().manual_seed(3),
                          backend="reference")
    got = sample_windows(m, s0, a0, g, cfg, torch.Generator().manual_seed(3), backend="fast")
    assert_close(got, want, rtol=1e-4, atol=1e-4)
