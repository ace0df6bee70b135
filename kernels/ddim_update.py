"""Fused classifier-free-guided DDIM update with the inpainting write, in one pass over the state.

Per element of the window x [B, T, C] (channels [s, a, r]):
  eps  = w * eps_c + (1 - w) * eps_u                 (eps_c, eps_u: the halves of the 2B forward)
  x0   = sqrt_recip_alpha * x - sqrt_recipm1_alpha * eps
  x0   = clamp(x0, -clip, clip);  eps = (x - sqrt_alpha * x0) * recip_sqrt_one_minus_alpha
  prev = sqrt_alpha_prev * x0 + dir_coef * eps [+ sigma * (noise_scale * noise)]
then step 0's state and action channels <- s0, a0 and later steps' action channels <- 0.
The operation order is the scheduler's (``DDIMScheduler.step``), and the coefficients are its
``step_coefficients`` floats; FMA contraction is switched off on the GPU so each product and sum
rounds as in the unfused PyTorch ops. The launchers are the CUDA implementation of the
``dawm_fast::ddim_guided_update`` and ``dawm_fast::condition_noise`` ops (their CPU
implementation is C++, csrc/cpu/ddim_update_cpu.cpp).

``condition_noise`` is the initial write: x = conditioning(scale * z).
"""
from __future__ import annotations

import torch

from ._triton import tl, triton

_BLOCK = 1024


# ---- Triton ------------------------------------------------------------------------------------
@triton.jit
def _window_index(offs, TC, C):
    # Flat offset into a contiguous [B, T, C] window -> (sample, step, channel).
    rem = offs % TC
    return offs // TC, rem // C, rem % C


@triton.jit
def _conditioned(val, b, step, c, mask, s0_ptr, a0_ptr, O, A):
    # Step 0 takes (s0, a0) in channels [0, O + A), every later step has zero action channels
    # [O, O + A); everything else keeps val.
    first = step == 0
    is_s = first & (c < O)
    is_a = (c >= O) & (c < O + A)
    s = tl.load(s0_ptr + b * O + c, mask=mask & is_s, other=0.0)
    a = tl.load(a0_ptr + b * A + (c - O), mask=mask & is_a & first, other=0.0)
    return tl.where(is_s, s, tl.where(is_a, a, val))


@triton.jit
def _ddim_update_kernel(eps2_ptr, x_ptr, noise_ptr, s0_ptr, a0_ptr, out_ptr,
                        N, TC, C, O, A, B, esb, est, esc,
                        w_cond, w_uncond, sqrt_recip_alpha, sqrt_recipm1_alpha, sqrt_alpha,
                        recip_sqrt_one_minus_alpha, sqrt_alpha_prev, dir_coef, sigma,
                        noise_scale, clip,
                        CLIP: tl.constexpr, HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N                                  # N = B * T * C
    b, step, c = _window_index(offs, TC, C)
    # eps2 is read through its strides (esb, est, esc): the U-Net's [2B, C, T] output viewed as
    # [2B, T, C] needs no transposing copy.
    e_offs = b * esb + step * est + c * esc
    eps_c = tl.load(eps2_ptr + e_offs, mask=mask, other=0.0).to(tl.float32)
    eps_u = tl.load(eps2_ptr + B * esb + e_offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = w_cond * eps_c + w_uncond * eps_u
    x0 = sqrt_recip_alpha * x - sqrt_recipm1_alpha * eps
    if CLIP:
        # NaN passes through, as with torch.clamp
        x0 = tl.minimum(tl.maximum(x0, -clip, propagate_nan=tl.PropagateNan.ALL), clip,
                        propagate_nan=tl.PropagateNan.ALL)
        eps = (x - sqrt_alpha * x0) * recip_sqrt_one_minus_alpha
    prev = sqrt_alpha_prev * x0 + dir_coef * eps
    if HAS_NOISE:
        noise = noise_scale * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        prev = prev + sigma * noise
    prev = _conditioned(prev, b, step, c, mask, s0_ptr, a0_ptr, O, A)
    tl.store(out_ptr + offs, prev, mask=mask)


@triton.jit
def _condition_noise_kernel(z_ptr, s0_ptr, a0_ptr, out_ptr, N, TC, C, O, A, scale,
                            BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    b, step, c = _window_index(offs, TC, C)
    val = scale * tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    val = _conditioned(val, b, step, c, mask, s0_ptr, a0_ptr, O, A)
    tl.store(out_ptr + offs, val, mask=mask)


# ---- launchers ---------------------------------------------------------------------------------
def _check_window(x: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor,
                  out: torch.Tensor | None) -> torch.Tensor:
    b, _, c = x.shape
    if s0.dim() != 2 or a0.dim() != 2 or s0.shape[0] != b or a0.shape[0] != b \
            or s0.shape[1] + a0.shape[1] > c:
        raise ValueError(f"s0 [B, obs_dim] and a0 [B, act_dim] do not fit x {tuple(x.shape)}: "
                         f"got {tuple(s0.shape)}, {tuple(a0.shape)}")
    if out is None:
        return torch.empty_like(x, memory_format=torch.contiguous_format)   # [B, T, C]
    if out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} tensor")
    return out


def ddim_update(eps2: torch.Tensor, x: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor, *,
                guidance_weight: float, sqrt_recip_alpha: float, sqrt_recipm1_alpha: float,
                sqrt_alpha: float, recip_sqrt_one_minus_alpha: float, sqrt_alpha_prev: float,
                dir_coef: float, sigma: float = 0.0, clip: float | None = None,
                noise: torch.Tensor | None = None, noise_scale: float = 1.0,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """One guided DDIM step + conditioning write -> x_prev [B, T, C] (into ``out`` if given).

    eps2 [2B, T, C], any strides (rows [0, B) conditional, [B, 2B) unconditional), x [B, T, C],
    s0 [B, obs_dim], a0 [B, act_dim], noise [B, T, C] (added as sigma * (noise_scale * noise)).
    """
    b, t, c = x.shape
    if eps2.shape != (2 * b, t, c):
        raise ValueError(f"eps2 must be [{2 * b}, {t}, {c}], got {tuple(eps2.shape)}")
    out = _check_window(x, s0, a0, out)
    n = b * t * c
    nz = noise.contiguous() if noise is not None else x            # unused pointer when absent
    _ddim_update_kernel[(triton.cdiv(n, _BLOCK),)](
        eps2, x.contiguous(), nz, s0.contiguous(), a0.contiguous(), out,
        n, t * c, c, s0.shape[1], a0.shape[1], b, *eps2.stride(),
        float(guidance_weight), 1.0 - float(guidance_weight), float(sqrt_recip_alpha),
        float(sqrt_recipm1_alpha), float(sqrt_alpha), float(recip_sqrt_one_minus_alpha),
        float(sqrt_alpha_prev), float(dir_coef), float(sigma), float(noise_scale),
        float(clip) if clip is not None else 0.0,
        CLIP=clip is not None, HAS_NOISE=noise is not None, BLOCK=_BLOCK, num_warps=4,
        enable_fp_fusion=False)
    return out


def condition_noise(z: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor, scale: float = 1.0,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Initial window: conditioning(scale * z) for z [B, T, C] -> [B, T, C]."""
    out = _check_window(z, s0, a0, out)
    b, t, c = z.shape
    n = b * t * c
    _condition_noise_kernel[(triton.cdiv(n, _BLOCK),)](
        z.contiguous(), s0.contiguous(), a0.contiguous(), out, n, t * c, c, s0.shape[1],
        a0.shape[1], float(scale), BLOCK=_BLOCK, num_warps=4)
    return out


# ---- reference ---------------------------------------------------------------------------------
def _conditioned_reference(x: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    o, a = s0.shape[1], a0.shape[1]
    x = x.clone()
    x[:, 0, :o] = s0
    x[:, 0, o:o + a] = a0
    x[:, 1:, o:o + a] = 0.0
    return x


def ddim_update_reference(eps2: torch.Tensor, x: torch.Tensor, s0: torch.Tensor,
                          a0: torch.Tensor, *, guidance_weight: float, sqrt_recip_alpha: float,
                          sqrt_recipm1_alpha: float, sqrt_alpha: float,
                          recip_sqrt_one_minus_alpha: float, sqrt_alpha_prev: float,
                          dir_coef: float, sigma: float = 0.0, clip: float | None = None,
                          noise: torch.Tensor | None = None, noise_scale: float = 1.0,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch ``ddim_update``, op for op."""
    w = guidance_weight
    eps_c, eps_u = eps2.chunk(2)                                            # [B, T, C] each
    eps = w * eps_c + (1.0 - w) * eps_u
    x0 = sqrt_recip_alpha * x - sqrt_recipm1_alpha * eps
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = (x - sqrt_alpha * x0) * recip_sqrt_one_minus_alpha
    prev = sqrt_alpha_prev * x0 + dir_coef * eps
    if noise is not None:
        prev = prev + sigma * (noise_scale * noise)
    prev = _conditioned_reference(prev, s0, a0)
    if out is not None:
        return out.copy_(prev)
    return prev


def condition_noise_reference(z: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor,
                              scale: float = 1.0,
                              out: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch ``condition_noise``."""
    x = _conditioned_reference(scale * z, s0, a0)
    if out is not None:
        return out.copy_(x)
    return x
