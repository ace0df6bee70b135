"""dawm_fast's operators: one op per fused step, registered once with the dispatcher.

Each op's schema is in csrc/ops.cpp (``TORCH_LIBRARY(dawm_fast)``); its CPU implementation is
C++ (csrc/cpu/), its CUDA implementation the Triton kernel of ``dawm_fast.kernels`` (registered
in ``registrations``), and its plain-PyTorch reference sits beside that kernel:

* ``ddim_guided_update``: one fused pass per DDIM step (guidance combine, x0 prediction, clip,
  eps re-derivation, x_prev, conditioning write);
* ``condition_noise``: the initial window ``conditioning(scale * z)``;
* ``groupnorm_mish``: the fused U-Net epilogue Mish(GroupNorm(conv + bias)) [+ adds], with
  autograd (its backward is the op ``groupnorm_mish_backward``);
* ``GraphSampler``: captures the guided sampling loop (``dawm_fast.sampling``) as a CUDA graph
  and replays it.

Nothing is compiled at import; ``load_extension()`` (called by every entry point) imports the
prebuilt ``dawm_fast._C`` or JIT-builds the sources once (see ``loader``).
"""
from __future__ import annotations

import torch

from dawm_fast.ops.loader import (BUILD_MESSAGE, ExtensionUnavailable, extension_dir, has_ops,
                                  load_extension)
from dawm_fast.world_model.scheduler import StepCoefficients


def step_kwargs(c: StepCoefficients) -> dict[str, float | None]:
    """``DDIMScheduler.step_coefficients(i)`` as ``ddim_guided_update``'s keyword arguments."""
    return dict(sqrt_recip_alpha=c.sqrt_recip_alpha, sqrt_recipm1_alpha=c.sqrt_recipm1_alpha,
                sqrt_alpha=c.sqrt_alpha, recip_sqrt_one_minus_alpha=c.recip_sqrt_one_minus_alpha,
                sqrt_alpha_prev=c.sqrt_alpha_prev, dir_coef=c.dir_coef, sigma=c.sigma,
                clip=c.clip)


def ddim_guided_update(eps2: torch.Tensor, x: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor,
                       *, guidance_weight: float, sqrt_recip_alpha: float,
                       sqrt_recipm1_alpha: float, sqrt_alpha: float,
                       recip_sqrt_one_minus_alpha: float, sqrt_alpha_prev: float,
                       dir_coef: float, sigma: float = 0.0, clip: float | None = None,
                       noise: torch.Tensor | None = None,
                       noise_scale: float = 1.0) -> torch.Tensor:
    """One guided DDIM step + conditioning write -> x_prev [B, T, C] (a new tensor).

    eps2 [2B, T, C] (rows [0, B) conditional, [B, 2B) unconditional; any strides), x [B, T, C],
    s0 [B, obs_dim], a0 [B, act_dim], noise [B, T, C] or None (added as
    sigma * (noise_scale * noise)); float32, one device, all but eps2 contiguous. The constants
    are ``DDIMScheduler.step_coefficients`` (see ``step_kwargs``); the result equals
    ``conditioning(step(w * eps_c + (1 - w) * eps_u, ...))`` bit for bit.
    """
    load_extension()
    return torch.ops.dawm_fast.ddim_guided_update(
        eps2, x, s0, a0, noise, float(guidance_weight), float(sqrt_recip_alpha),
        float(sqrt_recipm1_alpha), float(sqrt_alpha), float(recip_sqrt_one_minus_alpha),
        float(sqrt_alpha_prev), float(dir_coef), float(sigma),
        None if clip is None else float(clip), float(noise_scale))


def condition_noise(z: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor,
                    scale: float = 1.0) -> torch.Tensor:
    """The initial window conditioning(scale * z) for z [B, T, C] -> [B, T, C]."""
    load_extension()
    return torch.ops.dawm_fast.condition_noise(z, s0, a0, float(scale))


def groupnorm_mish(conv_out: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
                   beta: torch.Tensor, num_groups: int, eps: float = 1e-5,
                   emb_add: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """Fused Conv1dBlock epilogue Mish(GroupNorm(conv_out + bias)) [+ emb_add[:, :, None]]
    [+ residual] -> a new [B, C, T] tensor; differentiable on CUDA (the CPU kernel is fp32
    inference only).

    conv_out [B, C, T] (the conv WITHOUT its bias), bias/gamma/beta [C], emb_add [B, C],
    residual [B, C, T]; contiguous. Equals ``dawm_fast.kernels.groupnorm_mish.
    groupnorm_mish_reference`` to float rounding.
    """
    load_extension()
    return torch.ops.dawm_fast.groupnorm_mish(conv_out, bias, gamma, beta, int(num_groups),
                                              float(eps), emb_add, residual)


def __getattr__(name: str):
    # GraphSampler is a class of the compiled module: resolved (and built) on first access.
    if name == "GraphSampler":
        return load_extension().GraphSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILD_MESSAGE", "ExtensionUnavailable", "GraphSampler", "condition_noise",
           "ddim_guided_update", "extension_dir", "groupnorm_mish", "has_ops", "load_extension",
           "step_kwargs"]
