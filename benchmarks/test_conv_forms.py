"""The U-Net's "same" convolutions, shape by shape: reference = F.conv1d (cuDNN / mkldnn), fast =
the form the fused block picks on this device (``FusedConv1dBlock.conv_forward``), banded = always the
banded GEMM. Inference at the sampling batch (2B rows), training (forward + backward) at the
training batch. This is the measurement behind ``fused_unet.banded_max_horizon``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, GPU, record, sync, unet_config
from dawm_fast.world_model.fused_unet import FusedConv1dBlock, banded_weight, conv1d_banded
from dawm_fast.world_model.unet import Conv1dBlock, TemporalUNet

OBS_DIM, ACT_DIM, HORIZON = 17, 6, 8


def _conv_shapes() -> list[tuple[int, int, int]]:
    """(in_ch, out_ch, T) of every distinct Conv1dBlock conv in the benchmark U-Net."""
    unet = TemporalUNet(OBS_DIM + ACT_DIM + 1, ACT_DIM, HORIZON, unet_config())
    shapes, hooks = [], []
    for m in unet.modules():
        if isinstance(m, Conv1dBlock):
            hooks.append(m.conv.register_forward_hook(
                lambda mod, inp, out: shapes.append((mod.in_channels, mod.out_channels,
                                                     inp[0].shape[2]))))
    with torch.no_grad():
        unet(torch.zeros(1, HORIZON, OBS_DIM + ACT_DIM + 1), torch.zeros(1, dtype=torch.long),
             torch.zeros(1), torch.zeros(1, ACT_DIM))
    for h in hooks:
        h.remove()
    return sorted(set(shapes), key=lambda s: (s[2], s[0], s[1]))


SHAPES = _conv_shapes()
ROWS = {"inference": 8192 if GPU else 512, "training": 256 if GPU else 64}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-T{s[2]}")
@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("impl", ["reference", "fast", "banded"])
def test_conv_form(benchmark, shape, mode, impl):
    cin, cout, t = shape
    torch.manual_seed(0)
    block = FusedConv1dBlock(Conv1dBlock(cin, cout, unet_config().kernel_size, 1)).to(DEVICE)
    conv = block.conv
    x = torch.randn(ROWS[mode], cin, t, device=DEVICE, requires_grad=mode == "training")
    fn = {"reference": lambda: F.conv1d(x, conv.weight, None, 1, conv.padding),
          "fast": lambda: block.conv_forward(x),
          "banded": lambda: conv1d_banded(x, banded_weight(conv.weight, conv.padding[0], t),
                                          cout)}[impl]

    def run():
        if mode == "training":
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
        sync()

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    record(benchmark, impl=impl, rows=ROWS[mode], case=f"{mode}, {cin}->{cout} ch, T={t}")
