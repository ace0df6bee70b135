"""TemporalUNet forward with every Conv1dBlock epilogue fused into one kernel.

Same parameters and the same function as ``TemporalUNet.forward``: convolutions stay in PyTorch
GEMMs/convs, run without their bias; bias add, GroupNorm, Mish and the ResidualTemporalBlock's
embedding add (block1) or residual add (block2) are one ``groupnorm_mish`` kernel call per
Conv1dBlock. The embedding MLPs, down/upsampling and the final 1x1 conv are the module's own layers.

Convolutions (``_conv1d``): over short horizons (T < k, the deepest levels, where the widest
channels and most of the FLOPs are) one banded GEMM, exact and 2.5x fewer FLOPs than the padded
conv at T = 2, with or without autograd, on any device (``banded_max_horizon`` says where; GPU
inference also at T = 8, where cuDNN's layout transposes cost more than the extra FLOPs); longer
horizons keep cuDNN / mkldnn. Inference caches each banded matrix per weight version.

``use_triton`` picks the Triton epilogue or the CPU path; by default ``kernels.triton_usable``
decides from the input's device. On the CPU path, where no gradient is needed and the C++
extension is available, the epilogue is the ``dawm_fast::groupnorm_mish`` CPU op; otherwise
(training, backward, no extension) it is the plain-PyTorch reference epilogue.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from dawm_fast.world_model.unet import Conv1dBlock, ResidualTemporalBlock, TemporalUNet
from dawm_fast.kernels import triton_usable
from dawm_fast.kernels.groupnorm_mish import groupnorm_mish, groupnorm_mish_reference

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
    autograd differentiates; also for bf16 inputs, which the C++ op does not take)."""
    tensors = (conv_out, bias, gamma, beta, emb_add, residual)
    if (_no_grad_cpu(*tensors)
            and all(t is None or t.dtype == torch.float32 for t in tensors)):
        from dawm_fast import ops   # lazy: dawm_fast.ops imports the world model package
        if ops.has_ops():
            return ops.groupnorm_mish(
                conv_out.contiguous(), bias.contiguous(), gamma.contiguous(), beta.contiguous(),
                num_groups, eps, None if emb_add is None else emb_add.contiguous(),
                None if residual is None else residual.contiguous())
    return groupnorm_mish_reference(conv_out, bias, gamma, beta, num_groups, eps,
                                    emb_add=emb_add, residual=residual)


def banded_weight(weight: torch.Tensor, padding: int, t: int) -> torch.Tensor:
    """A stride-1 conv1d over exactly t steps as one dense matrix [out_ch * t, in_ch * t]: row
    (o, s), column (c, u) holds weight[o, c, u - s + padding], zero where that tap falls outside
    the kernel. Built from slices of the zero-padded kernel, so it is differentiable. (Measured on
    an H200, world-model step at batch 256: 6.70 ms with this build, 7.93 ms with a gather of taps
    plus a custom backward of three kernels, fewer kernels but slow index_select and short sums.)"""
    cout, cin, _ = weight.shape
    wp = F.pad(weight, (t, t))                                   # [out_ch, in_ch, k + 2t]
    # Row block s: tap u - s + padding of input u is column t + padding - s + u of wp.
    rows = [wp[:, :, t + padding - s: 2 * t + padding - s] for s in range(t)]
    return torch.stack(rows, dim=1).reshape(cout * t, cin * t)   # [(o, s), (c, u)]


# Inference reuses each conv's banded matrix while its weight is unchanged (a sampling call runs
# the U-Net once per DDIM step). A stale entry is rebuilt IN PLACE, so a CUDA graph captured on
# the matrix reads the new values once ``refresh_banded_cache(model)`` has run (the graph sampler
# calls it before every replay). During a capture a missing or stale entry is not made: the capture
# then builds the matrix itself, which every replay redoes from the current weights.
_BANDED_CACHE = WeakTensorKeyDictionary()      # weight -> (its version key, banded matrix)


def _cache_key(weight: torch.Tensor, padding: int, t: int) -> tuple:
    return (weight.data_ptr(), weight._version, weight.dtype, padding, t)


def _banded_matrix(weight: torch.Tensor, padding: int, t: int) -> torch.Tensor:
    if torch.is_grad_enabled() and weight.requires_grad:
        return banded_weight(weight, padding, t)
    key = _cache_key(weight, padding, t)
    hit = _BANDED_CACHE.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    if weight.is_cuda and torch.cuda.is_current_stream_capturing():
        return banded_weight(weight, padding, t)
    with torch.no_grad():
        fresh = banded_weight(weight, padding, t)
        if hit is not None and hit[1].shape == fresh.shape and hit[1].device == fresh.device:
            fresh = hit[1].copy_(fresh)
    _BANDED_CACHE[weight] = (key, fresh)
    return fresh


def refresh_banded_cache(module: torch.nn.Module) -> None:
    """Rebuild (in place) every cached banded matrix of ``module``'s weights that changed since it
    was made: an optimizer step, an EMA update or load_state_dict between two sampling calls.
    Call it before replaying a CUDA graph that reads them (eager calls rebuild on lookup)."""
    for weight in module.parameters():
        hit = _BANDED_CACHE.get(weight)
        if hit is None:
            continue
        *_, padding, t = hit[0]
        if hit[0] != _cache_key(weight, padding, t):
            with torch.no_grad():
                _banded_matrix(weight, padding, t)


def _conv1d_banded(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Stride-1 conv1d (no bias) as ONE GEMM with the banded matrix: [B, in_ch*T] @
    [in_ch*T, out_ch*T], and the result is already [B, out_ch, T]. It multiplies T*T weights
    per channel pair where the padded conv multiplies k*T, so it wins for short horizons: at
    T = 2, k = 5 a U-Net's widest levels (most of its FLOPs) cost 2.5x fewer FLOPs, exactly."""
    b, cin, t = x.shape
    m = _banded_matrix(weight, padding, t)                                  # [out_ch*T, in_ch*T]
    return (x.reshape(b, cin * t) @ m.t()).view(b, weight.shape[0], t)     # [B, out_ch, T]


def _same_padding(conv: torch.nn.Conv1d) -> int | None:
    """The padding of a stride-1, undilated, ungrouped "same" conv, else None."""
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    k = conv.weight.shape[2]
    if (not isinstance(pad, int) or conv.stride != (1,) or conv.dilation != (1,)
            or conv.groups != 1 or 2 * pad != k - 1):
        return None
    return pad


def banded_max_horizon(device: torch.device, kernel_size: int, training: bool) -> int:
    """Longest horizon whose "same" convolutions run as banded GEMMs. A banded GEMM multiplies
    T*T weights per channel pair, the padded conv k*T: fewer for every T < k. Measured on the CPU
    (1 thread, other cores idle; benchmarks/test_conv_forms.py): inference 1.2-4x faster than
    mkldnn's conv for every T < k; forward + backward clearly faster at T <= k // 2 (1.2-1.5x),
    mixed between. On a GPU every T < k for training (one cuBLAS GEMM instead of cuDNN's
    tiny-horizon convolutions: without them an H200 world-model step took 8.3 ms instead of 6.6),
    and T <= 2(k - 1) for inference: at T = 8, k = 5 cuDNN runs its convolution in NHWC with
    layout transposes around it that cost more than the banded GEMM's 1.6x FLOPs (H200 sampling
    +19% at batch 256, +4% at 4096; benchmarks/profile_step.py)."""
    if device.type == "cpu" and training:
        return kernel_size // 2
    if device.type == "cuda" and not training:
        return 2 * (kernel_size - 1)
    return kernel_size - 1


def _conv1d(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """``F.conv1d(x, conv.weight)`` (no bias) in its cheapest exact form, on any device, with or
    without autograd: a banded GEMM for short horizons (``banded_max_horizon``; at T = 2, where
    the U-Net's widest levels carry most of its FLOPs, 2.5x fewer multiplies), else
    ``F.conv1d``."""
    w = conv.weight
    pad = _same_padding(conv)
    training = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if pad is not None and x.shape[2] <= banded_max_horizon(x.device, w.shape[2], training):
        return _conv1d_banded(x, w, pad)
    return F.conv1d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_block(block: Conv1dBlock, x: torch.Tensor, epilogue: Epilogue,
                emb_add: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """Conv1dBlock (+ adds) on x [B, in_ch, T] -> [B, out_ch, T]."""
    conv, norm = block.conv, block.norm
    h = _conv1d(x, conv)                                                    # [B, out_ch, T]
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
