"""TemporalUNet forward with every Conv1dBlock epilogue fused into one kernel.

Same parameters and the same function as ``TemporalUNet.forward``: convolutions stay in PyTorch,
run without their bias; bias add, GroupNorm, Mish and the ResidualTemporalBlock's embedding add
(block1) or residual add (block2) are one ``groupnorm_mish`` kernel call per Conv1dBlock. The
embedding MLPs, down/upsampling and the final 1x1 conv are the module's own layers.

``use_triton`` picks the Triton epilogue or its plain-PyTorch reference (the CPU path); by default
``kernels.triton_usable`` decides from the input's device.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dawm_fast.world_model.unet import Conv1dBlock, ResidualTemporalBlock, TemporalUNet
from kernels import triton_usable
from kernels.groupnorm_mish import groupnorm_mish, groupnorm_mish_reference

Epilogue = Callable[..., torch.Tensor]


def _conv_block(block: Conv1dBlock, x: torch.Tensor, epilogue: Epilogue,
                emb_add: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """Conv1dBlock (+ adds) on x [B, in_ch, T] -> [B, out_ch, T]."""
    conv, norm = block.conv, block.norm
    h = F.conv1d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                 conv.groups)                                               # [B, out_ch, T]
    return epilogue(h, conv.bias, norm.weight, norm.bias, norm.num_groups, norm.eps,
                    emb_add=emb_add, residual=residual)


def _residual_block(block: ResidualTemporalBlock, x: torch.Tensor, mish_emb: torch.Tensor,
                    epilogue: Epilogue) -> torch.Tensor:
    """ResidualTemporalBlock on x [B, in_ch, T]; mish_emb = Mish(emb) [B, embed_dim], shared by
    every block (embed_proj is Mish -> Linear)."""
    lin = block.embed_proj[1]
    emb_add = F.linear(mish_emb, lin.weight, lin.bias)                     # [B, out_ch]
    h = _conv_block(block.block1, x, epilogue, emb_add=emb_add)
    return _conv_block(block.block2, h, epilogue, residual=block.residual(x))


def fused_unet_forward(unet: TemporalUNet, x: torch.Tensor, t: torch.Tensor,
                       returns: torch.Tensor, actions: torch.Tensor,
                       returns_mask: torch.Tensor | bool | None = None, *,
                       use_triton: bool | None = None) -> torch.Tensor:
    """``unet(x, t, returns, actions, returns_mask)`` with fused epilogues: x [B, T, C] -> eps
    [B, T, C]. Differentiable (the Triton epilogue has its own backward)."""
    if use_triton is None:
        use_triton = triton_usable(x)
    epilogue = groupnorm_mish if use_triton else groupnorm_mish_reference
    mish_emb = F.mish(unet.embed(t, returns, actions, returns_mask))       # [B, 3 * dim]
    h = x.transpose(1, 2)                                                  # [B, C, T]
    skips = []
    for res1, res2, down in unet.downs:
        h = _residual_block(res2, _residual_block(res1, h, mish_emb, epilogue), mish_emb,
                            epilogue)
        skips.append(h)
        h = down(h)
    h = _residual_block(unet.mid1, h, mish_emb, epilogue)
    h = _residual_block(unet.mid2, h, mish_emb, epilogue)
    for res1, res2, up in unet.ups:
        h = torch.cat([h, skips.pop()], dim=1)
        h = up(_residual_block(res2, _residual_block(res1, h, mish_emb, epilogue), mish_emb,
                               epilogue))
    h = unet.final_conv(_conv_block(unet.final_block, h, epilogue))        # [B, C, T]
    return h.transpose(1, 2)                                               # [B, T, C]
