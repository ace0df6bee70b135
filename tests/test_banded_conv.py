"""The banded-GEMM form of the U-Net's short-horizon convolutions (FusedConv1dBlock): the same
function as F.conv1d, forward and backward, on fresh random inputs; each block's inference
matrix follows in-place weight updates, in place."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dawm_fast.world_model.fused_unet import (FusedConv1dBlock, banded_weight, conv1d_banded,
                                              refresh_banded_)
from dawm_fast.world_model.unet import Conv1dBlock

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def seed(request) -> int:
    s = int(np.random.SeedSequence().entropy % 2**31)
    print(f"{request.node.name}: seed {s}")
    return s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cin,cout,k,t", [(8, 16, 5, 2), (64, 32, 5, 2), (24, 40, 5, 1),
                                          (16, 16, 7, 3), (12, 20, 3, 1), (32, 64, 5, 4),
                                          (9, 5, 5, 8)])
def test_banded_conv_matches_conv1d_forward_and_backward(seed, device, cin, cout, k, t):
    """Any horizon (the banded form is exact for every T; the fused block uses it below
    banded_max_horizon)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, cin, t, generator=g).to(device).requires_grad_()
    w = torch.randn(cout, cin, k, generator=g).to(device).requires_grad_()
    dy = torch.randn(6, cout, t, generator=g).to(device)
    want = F.conv1d(x, w, None, 1, k // 2)
    got = conv1d_banded(x, banded_weight(w, k // 2, t), cout)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gx_w, gw_w = torch.autograd.grad(want, (x, w), dy)
    gx, gw = torch.autograd.grad(got, (x, w), dy)
    torch.testing.assert_close(gx, gx_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw_w, rtol=1e-5, atol=1e-5)


def test_banded_weight_layout(seed):
    """Row (o, s), column (c, u) = weight[o, c, u - s + padding], zero outside the kernel."""
    g = torch.Generator().manual_seed(seed)
    cout, cin, k, t, pad = 3, 2, 5, 4, 2
    w = torch.randn(cout, cin, k, generator=g)
    m = banded_weight(w, pad, t).view(cout, t, cin, t)
    for o in range(cout):
        for s in range(t):
            for c in range(cin):
                for u in range(t):
                    j = u - s + pad
                    want = w[o, c, j] if 0 <= j < k else 0.0
                    assert m[o, s, c, u] == want


def test_cpu_inference_cache_follows_weight_updates(seed):
    """Inference on the CPU reuses a conv's banded matrix; an in-place update of the weight
    (an optimizer step, an EMA lerp, load_state_dict) must invalidate it."""
    g = torch.Generator().manual_seed(seed)
    block = FusedConv1dBlock(Conv1dBlock(16, 32, 5, 1))
    conv = block.conv
    x = torch.randn(4, 16, 2, generator=g)
    with torch.no_grad():
        first = block.conv_forward(x)
        torch.testing.assert_close(first, F.conv1d(x, conv.weight, None, 1, 2))
        conv.weight.mul_(-0.5)
        second = block.conv_forward(x)
        torch.testing.assert_close(second, F.conv1d(x, conv.weight, None, 1, 2))
        conv.load_state_dict({"weight": torch.randn(32, 16, 5, generator=g),
                              "bias": conv.bias.clone()})
        torch.testing.assert_close(block.conv_forward(x), F.conv1d(x, conv.weight, None, 1, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_refresh_rebuilds_cached_matrices_in_place(seed, device):
    """refresh_banded_(module) (run before every graph replay) rebuilds a block's stale matrix
    into the SAME memory, which is what a CUDA graph captured on it reads."""
    g = torch.Generator().manual_seed(seed)
    block = FusedConv1dBlock(Conv1dBlock(8, 12, 5, 1)).to(device)
    conv = block.conv
    x = torch.randn(3, 8, 4, generator=g).to(device)
    with torch.no_grad():
        block.conv_forward(x)
        cached = block._banded[1]
        address = cached.data_ptr()
        conv.weight.copy_(torch.randn(12, 8, 5, generator=g))
        refresh_banded_(torch.nn.Sequential(block))
        assert cached.data_ptr() == address and block._banded[1] is cached
        torch.testing.assert_close(cached, banded_weight(conv.weight, 2, 4), rtol=0, atol=0)
        torch.testing.assert_close(block.conv_forward(x), F.conv1d(x, conv.weight, None, 1, 2))
