"""What Python registers for the ops that csrc/ops.cpp defines: the Triton kernels as their CUDA
implementations, the autograd of ``groupnorm_mish`` and the fake (shape-only) kernels.

One CUDA implementation per op. For the DDIM update both a Triton kernel and a CUDA C++ kernel
existed; no measurement compared them (benchmarks/RESULTS.md times the whole sampling call), so
the Triton one stayed: it is the kernel family the U-Net epilogue already uses, it is tested on
any machine (Triton's interpreter runs it on CPU tensors, and tests/test_kernels.py compiles it
for sm_90), and it keeps csrc/ free of CUDA kernels. ``register()`` runs once, right after the
extension defined the ops (``loader.load_extension``).
"""
from __future__ import annotations

import torch

from dawm_fast.kernels import HAS_TRITON
from dawm_fast.kernels import ddim_update as _du
from dawm_fast.kernels import groupnorm_mish as _gm


def _ddim_guided_update_cuda(eps2, x, s0, a0, noise, w, sqrt_recip_alpha, sqrt_recipm1_alpha,
                             sqrt_alpha, recip_sqrt_one_minus_alpha, sqrt_alpha_prev, dir_coef,
                             sigma, clip=None, noise_scale=1.0):
    return _du.ddim_update(eps2, x, s0, a0, guidance_weight=w, sqrt_recip_alpha=sqrt_recip_alpha,
                           sqrt_recipm1_alpha=sqrt_recipm1_alpha, sqrt_alpha=sqrt_alpha,
                           recip_sqrt_one_minus_alpha=recip_sqrt_one_minus_alpha,
                           sqrt_alpha_prev=sqrt_alpha_prev, dir_coef=dir_coef, sigma=sigma,
                           clip=clip, noise=noise, noise_scale=noise_scale)


def _condition_noise_cuda(z, s0, a0, scale=1.0):
    return _du.condition_noise(z, s0, a0, scale)


def _groupnorm_mish_cuda(conv_out, bias, gamma, beta, num_groups, eps, emb_add, residual):
    return _gm.groupnorm_mish_forward(conv_out, bias, gamma, beta, num_groups, eps, emb_add,
                                      residual)


def _groupnorm_mish_backward_cuda(grad_out, conv_out, bias, gamma, beta, num_groups, eps):
    return _gm.groupnorm_mish_backward(grad_out, conv_out, bias, gamma, beta, num_groups, eps)


def _setup_context(ctx, inputs, output):
    conv_out, bias, gamma, beta, num_groups, eps, emb_add, residual = inputs
    ctx.save_for_backward(conv_out, bias, gamma, beta)
    ctx.num_groups, ctx.eps = num_groups, eps
    ctx.has_emb, ctx.has_res = emb_add is not None, residual is not None


def _groupnorm_mish_grad(ctx, grad_out):
    conv_out, bias, gamma, beta = ctx.saved_tensors
    dx, dbias, dgamma, dbeta = torch.ops.dawm_fast.groupnorm_mish_backward(
        grad_out, conv_out, bias, gamma, beta, ctx.num_groups, ctx.eps)
    demb = grad_out.sum(dim=2) if ctx.has_emb else None                     # [B, C]
    dres = grad_out if ctx.has_res else None                                # [B, C, T]
    return dx, dbias, dgamma, dbeta, None, None, demb, dres


def _register_fake_kernels() -> None:
    """Shape-only kernels so torch.compile and FakeTensor tracing can see the ops."""
    @torch.library.register_fake("dawm_fast::ddim_guided_update")
    def _ddim_guided_update_fake(eps2, x, s0, a0, noise, w, sqrt_recip_alpha, sqrt_recipm1_alpha,
                                 sqrt_alpha, recip_sqrt_one_minus_alpha, sqrt_alpha_prev,
                                 dir_coef, sigma, clip=None, noise_scale=1.0):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dawm_fast::condition_noise")
    def _condition_noise_fake(z, s0, a0, scale=1.0):
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dawm_fast::groupnorm_mish")
    def _groupnorm_mish_fake(conv_out, bias, gamma, beta, num_groups, eps, emb_add, residual):
        return torch.empty_like(conv_out, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dawm_fast::groupnorm_mish_backward")
    def _groupnorm_mish_backward_fake(grad_out, conv_out, bias, gamma, beta, num_groups, eps):
        return (torch.empty_like(conv_out, memory_format=torch.contiguous_format),
                torch.empty_like(bias), torch.empty_like(gamma), torch.empty_like(beta))


def register() -> None:
    _register_fake_kernels()
    if HAS_TRITON:       # without Triton (not Linux) the ops have no CUDA implementation
        for name, fn in (("ddim_guided_update", _ddim_guided_update_cuda),
                         ("condition_noise", _condition_noise_cuda),
                         ("groupnorm_mish", _groupnorm_mish_cuda),
                         ("groupnorm_mish_backward", _groupnorm_mish_backward_cuda)):
            torch.library.register_kernel(f"dawm_fast::{name}", "cuda", fn)
    torch.library.register_autograd("dawm_fast::groupnorm_mish", _groupnorm_mish_grad,
                                    setup_context=_setup_context)
