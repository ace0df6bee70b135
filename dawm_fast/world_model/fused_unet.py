"""TemporalUNet forward with every Conv1dBlock epilogue fused into one kernel.

Same parameters and the same function as ``TemporalUNet.forward``: convolutions stay in PyTorch,
run without their bias; bias add, GroupNorm, Mish and the ResidualTemporalBlock's embedding add
(block1) or residual add (block2) are one ``groupnorm_mish`` kernel call per Conv1dBlock. The
embedding MLPs, down/upsampling and the final 1x1 conv are the module's own layers.

``use_triton`` picks the Triton epilogue or the CPU path; by default ``kernels.triton_usable``
decides from the input's device. On the CPU path, where no gradient is needed and the C++
extension is available, the epilogue is the ``dawm_fast::groupnorm_mish`` CPU op and the
convolutions pick a cheaper form for short horizons (``_conv1d_cpu``); otherwise (training,
backward, no extension) it is the plain-PyTorch reference epilogue and ``F.conv1d``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dawm_fast.world_model.unet import Conv1dBlock, ResidualTemporalBlock, TemporalUNet
from kernels import triton_usable
from kernels.groupnorm_mish import groupnorm_mish, groupnorm_mish_reference

Epilogue = Callable[..., torch.Tensor]


def _no_grad_cpu(*tensors: torch.Tensor | None) -> bool:
    """All given tensors on the CPU and none of them needs a gradient here."""
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                                  for t in tensors)


def _cpu_epilogue(conv_out: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
                  beta: torch.Tensor, num_groups: int, eps: float = 1e-5,
                  emb_add: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """The CPU epilogue: the fused C++ op for inference, else the plain-PyTorch reference (which
    autograd differentiates)."""
    if _no_grad_cpu(conv_out, bias, gamma, beta, emb_add, residual):
        from dawm_fast import ops   # lazy: dawm_fast.ops imports the world model package
        if ops.has_ops():
            return ops.groupnorm_mish(
                conv_out.contiguous(), bias.contiguous(), gamma.contiguous(), beta.contiguous(),
                num_groups, eps, None if emb_add is None else emb_add.contiguous(),
                None if residual is None else residual.contiguous())
    return groupnorm_mish_reference(conv_out, bias, gamma, beta, num_groups, eps,
                                    emb_add=emb_add, residual=residual)


def _cropped_taps(weight: torch.Tensor, padding: int, t: int) -> tuple[torch.Tensor, int]:
    """(weight, padding) of a stride-1 "same" conv over t steps, without the taps that only ever
    see zero padding: output step s reads input s + j - padding, which exists only for
    |j - padding| < t. Same function as the full kernel."""
    k = weight.shape[2]
    lo, hi = max(0, padding - (t - 1)), min(k, padding + t)
    if lo == 0 and hi == k:
        return weight, padding
    return weight[:, :, lo:hi], padding - lo


def _conv1d_gemm(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Stride-1 conv1d (no bias) as one im2col GEMM: [B*T, in_ch*k] @ [in_ch*k, out_ch]."""
    b, cin, t = x.shape
    cout, _, k = weight.shape
    cols = F.pad(x, (padding, padding)).unfold(2, k, 1)                    # [B, in_ch, T, k]
    cols = cols.permute(0, 2, 1, 3).reshape(b * t, cin * k)                 # [B*T, in_ch*k]
    out = cols @ weight.reshape(cout, cin * k).t()                          # [B*T, out_ch]
    return out.view(b, t, cout).transpose(1, 2).contiguous()                # [B, out_ch, T]


def _conv1d_cpu(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """``F.conv1d(x, conv.weight)`` (no bias) for inference on the CPU, in its fastest form for
    short horizons (measured with 1 thread, B = 128..512, k = 5): when T <= k // 2 the kernel is
    cropped to the taps that touch data and run as one im2col GEMM (T = 2: 3-13x faster than
    mkldnn); for k // 2 < T < k the GEMM wins only for wide outputs (out_ch >= 128 and
    >= in_ch); otherwise mkldnn's conv on the (cropped) kernel."""
    w = conv.weight
    t, k = x.shape[2], w.shape[2]
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    if (not isinstance(pad, int) or conv.stride != (1,) or conv.dilation != (1,)
            or conv.groups != 1 or 2 * pad != k - 1 or t >= k):
        return F.conv1d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    w, pad = _cropped_taps(w, pad, t)
    cin, cout = w.shape[1], w.shape[0]
    if t <= k // 2 or (cout >= 128 and cout >= cin):
        return _conv1d_gemm(x, w, pad)
    return F.conv1d(x, w, None, 1, pad)


def _conv_block(block: Conv1dBlock, x: torch.Tensor, epilogue: Epilogue,
                emb_add: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """Conv1dBlock (+ adds) on x [B, in_ch, T] -> [B, out_ch, T]."""
    conv, norm = block.conv, block.norm
    if epilogue is _cpu_epilogue and _no_grad_cpu(x, conv.weight):
        h = _conv1d_cpu(x, conv)                                            # [B, out_ch, T]
    else:
        h = F.conv1d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                     conv.groups)                                           # [B, out_ch, T]
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
    epilogue = groupnorm_mish if use_triton else _cpu_epilogue
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
