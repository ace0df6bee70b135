"""Fused residual-block epilogue: y = Mish(GroupNorm(conv_out + bias)) [+ emb_add] [+ residual].

One ``Conv1dBlock`` of the temporal U-Net is Conv1d -> GroupNorm -> Mish; the convolution stays in
cuDNN (run without its bias), and everything after it is this one kernel: bias add, group
statistics, affine, Mish, then the ResidualTemporalBlock's embedding add (block1) or residual add
(block2). One program handles one (sample, group): the horizon is tiny (T <= 8 at the top level),
so a group's C/G x T values fit in one tile (up to ``_MAX_TILE`` elements).

Layout: kernels -> launchers (``groupnorm_mish_forward`` / ``groupnorm_mish_backward``), and
``groupnorm_mish_reference``, the same function in plain PyTorch. The launchers are the CUDA
implementation of the ``dawm_fast::groupnorm_mish`` op and of its backward; the op's autograd is
registered once, in ``dawm_fast.ops.registrations``. The backward recomputes the group
statistics from conv_out (the same code as the forward, hence the same values) instead of
saving them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import tl, triton

# Largest group tile (elements) one program holds; the default U-Net has 16x8, 64x4 and 128x2.
_MAX_TILE = 16384


# ---- Triton ------------------------------------------------------------------------------------
@triton.jit
def _mish(z):
    # tanh(softplus(z)) = ((1+e)^2 - 1) / ((1+e)^2 + 1) = e(e+2) / (e(e+2) + 2) with e = exp(z);
    # the second form has no cancellation for very negative z. For z > 20, tanh(softplus(z)) is 1
    # in fp32 (and exp would overflow past 88), so mish(z) = z there.
    e = tl.exp(tl.minimum(z, 20.0))
    n = e * (e + 2.0)
    return tl.where(z > 20.0, z, z * n / (n + 2.0))


@triton.jit
def _mish_grad(z):
    # d/dz mish = tanh(sp) + z * sigmoid(z) * (1 - tanh(sp)^2) = n/(n+2) + 4 z e (1+e) / (n+2)^2.
    e = tl.exp(tl.minimum(z, 20.0))
    n = e * (e + 2.0)
    d = n + 2.0
    return tl.where(z > 20.0, 1.0, n / d + 4.0 * z * e * (1.0 + e) / (d * d))


@triton.jit
def _group_tile(C, G, T: tl.constexpr, CPG: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_T: tl.constexpr):
    """This program's (sample, group) tile, shared by the forward and backward kernels:
    pid = sample * G + group, its first channel c0, the [BLOCK_C, BLOCK_T] masks and offsets.
    [B, C, T] contiguous: the group is one contiguous [CPG, T] span."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // G
    c0 = (pid % G) * CPG
    ch = tl.arange(0, BLOCK_C)
    c_ok = ch < CPG
    t = tl.arange(0, BLOCK_T)
    ok = c_ok[:, None] & (t < T)[None, :]
    offs = (b * C + c0) * T + ch[:, None] * T + t[None, :]
    return pid, b, c0, ch, c_ok, ok, offs


@triton.jit
def _group_stats(x_ptr, bias_ptr, c0, ch, c_ok, ok, offs, eps, T: tl.constexpr,
                 CPG: tl.constexpr):
    """h = conv_out + bias over the group's tile, its deviation from the group mean (zero outside
    the tile) and 1 / std: two-pass variance in fp32. Shared by forward and backward, so the
    backward's statistics are the forward's."""
    h = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    h += tl.load(bias_ptr + c0 + ch, mask=c_ok, other=0.0)[:, None]
    n = CPG * T * 1.0
    mean = tl.sum(tl.where(ok, h, 0.0)) / n
    d = tl.where(ok, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(d * d) / n + eps)
    return d, rstd


@triton.jit
def _gn_mish_fwd_kernel(x_ptr, bias_ptr, gamma_ptr, beta_ptr, emb_ptr, res_ptr, out_ptr,
                        C, G, eps, T: tl.constexpr, CPG: tl.constexpr,
                        HAS_EMB: tl.constexpr, HAS_RES: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    # T and CPG (channels per group) are compile-time: a U-Net has one pair per level, and the
    # index arithmetic becomes constant. The [BLOCK_C, BLOCK_T] tile covers the whole group.
    pid, b, c0, ch, c_ok, ok, offs = _group_tile(C, G, T, CPG, BLOCK_C, BLOCK_T)
    d, rstd = _group_stats(x_ptr, bias_ptr, c0, ch, c_ok, ok, offs, eps, T, CPG)

    gamma = tl.load(gamma_ptr + c0 + ch, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c0 + ch, mask=c_ok, other=0.0)
    y = _mish(d * rstd * gamma[:, None] + beta[:, None])
    if HAS_EMB:
        y += tl.load(emb_ptr + b * C + c0 + ch, mask=c_ok, other=0.0)[:, None]
    if HAS_RES:
        y += tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y, mask=ok)


@triton.jit
def _gn_mish_bwd_kernel(dy_ptr, x_ptr, bias_ptr, gamma_ptr, beta_ptr,
                        dx_ptr, dgamma_ptr, dbeta_ptr, C, G, eps, T: tl.constexpr,
                        CPG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    pid, b, c0, ch, c_ok, ok, offs = _group_tile(C, G, T, CPG, BLOCK_C, BLOCK_T)
    d, rstd = _group_stats(x_ptr, bias_ptr, c0, ch, c_ok, ok, offs, eps, T, CPG)

    gamma = tl.load(gamma_ptr + c0 + ch, mask=c_ok, other=0.0)
    beta = tl.load(beta_ptr + c0 + ch, mask=c_ok, other=0.0)
    xhat = d * rstd
    dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    dz = tl.where(ok, dy * _mish_grad(xhat * gamma[:, None] + beta[:, None]), 0.0)
    # This sample's per-channel partials of dgamma = sum dz * xhat and dbeta = sum dz; the
    # launcher sums them over the batch.
    tl.store(dgamma_ptr + b * C + c0 + ch, tl.sum(dz * xhat, axis=1), mask=c_ok)
    tl.store(dbeta_ptr + b * C + c0 + ch, tl.sum(dz, axis=1), mask=c_ok)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over the group.
    n = CPG * T * 1.0
    dxhat = dz * gamma[:, None]
    m1 = tl.sum(dxhat) / n
    m2 = tl.sum(dxhat * xhat) / n
    tl.store(dx_ptr + offs, rstd * (dxhat - m1 - xhat * m2), mask=ok)


# ---- launchers ---------------------------------------------------------------------------------
def _tile(channels_per_group: int, t: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_T, num_warps): power-of-two tile over one group, masked at the edges."""
    block_c, block_t = triton.next_power_of_2(channels_per_group), triton.next_power_of_2(t)
    if block_c * block_t > _MAX_TILE:
        raise ValueError(f"a group of {channels_per_group} channels x {t} steps exceeds the "
                         f"fused kernel's one-tile limit of {_MAX_TILE} elements")
    num_warps = max(1, min(8, block_c * block_t // 256))   # ~8 elements per thread
    return block_c, block_t, num_warps


def _check(conv_out: torch.Tensor, num_groups: int) -> tuple[int, int, int]:
    if conv_out.dim() != 3:
        raise ValueError(f"conv_out must be [B, C, T], got shape {tuple(conv_out.shape)}")
    b, c, t = conv_out.shape
    if c % num_groups:
        raise ValueError(f"channels {c} not divisible by num_groups {num_groups}")
    return b, c, t


def groupnorm_mish_forward(conv_out: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
                           beta: torch.Tensor, num_groups: int, eps: float = 1e-5,
                           emb_add: torch.Tensor | None = None,
                           residual: torch.Tensor | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the fused epilogue. conv_out [B, C, T] (conv WITHOUT bias), bias/gamma/beta [C],
    emb_add [B, C], residual [B, C, T]. ``out`` (contiguous [B, C, T]) receives the result."""
    b, c, t = _check(conv_out, num_groups)
    x = conv_out.contiguous()
    if out is None:
        out = torch.empty_like(x)                                            # [B, C, T]
    elif out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} tensor")
    cpg = c // num_groups
    block_c, block_t, num_warps = _tile(cpg, t)
    emb = emb_add.contiguous() if emb_add is not None else out     # unused pointer when absent
    res = residual.contiguous() if residual is not None else out
    _gn_mish_fwd_kernel[(b * num_groups,)](
        x, bias, gamma, beta, emb, res, out, c, num_groups, float(eps), t, cpg,
        HAS_EMB=emb_add is not None, HAS_RES=residual is not None,
        BLOCK_C=block_c, BLOCK_T=block_t, num_warps=num_warps)
    return out


def groupnorm_mish_backward(grad_out: torch.Tensor, conv_out: torch.Tensor, bias: torch.Tensor,
                            gamma: torch.Tensor, beta: torch.Tensor, num_groups: int,
                            eps: float = 1e-5
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of Mish(GroupNorm(conv_out + bias)) given dL/dy [B, C, T]: (d conv_out
    [B, C, T], d bias [C], d gamma [C], d beta [C]). The grads of the optional adds are plain
    (dy itself, dy summed over T) and left to the caller."""
    b, c, t = _check(conv_out, num_groups)
    dy = grad_out.contiguous()
    x = conv_out.contiguous()
    dx = torch.empty_like(x)                                                 # [B, C, T]
    dgamma = torch.empty(b, c, device=x.device, dtype=torch.float32)         # [B, C] partials
    dbeta = torch.empty(b, c, device=x.device, dtype=torch.float32)          # [B, C] partials
    cpg = c // num_groups
    block_c, block_t, num_warps = _tile(cpg, t)
    _gn_mish_bwd_kernel[(b * num_groups,)](
        dy, x, bias, gamma, beta, dx, dgamma, dbeta, c, num_groups, float(eps), t, cpg,
        BLOCK_C=block_c, BLOCK_T=block_t, num_warps=num_warps)
    # The bias enters like conv_out, so its grad is d conv_out summed over batch and time.
    dbias = dx.sum(dim=(0, 2), dtype=torch.float32)
    return (dx, dbias.to(bias.dtype), dgamma.sum(0).to(gamma.dtype), dbeta.sum(0).to(beta.dtype))


# ---- reference ---------------------------------------------------------------------------------
def groupnorm_mish_reference(conv_out: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
                             beta: torch.Tensor, num_groups: int, eps: float = 1e-5,
                             emb_add: torch.Tensor | None = None,
                             residual: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: the ``Conv1dBlock`` tail plus ResidualTemporalBlock's adds."""
    y = F.mish(F.group_norm(conv_out + bias[:, None], num_groups, gamma, beta, eps))  # [B, C, T]
    if emb_add is not None:
        y = y + emb_add[:, :, None]
    if residual is not None:
        y = y + residual
    return y
