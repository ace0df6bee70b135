"""The "fast" sampling backend: fused U-Net epilogues and a fused guided DDIM update per step.

Same function as ``generate._sample_reference`` and the same random numbers, drawn from the
caller's generator in the documented order (one initial randn, then one per step only if
eta > 0). Per step: one fused 2B U-Net forward, then one kernel that combines the guidance
branches, applies the scheduler's update and writes the conditioning.

Whether the Triton kernels run is decided by ``kernels.triton_usable`` (CUDA, or CPU under
TRITON_INTERPRET=1); otherwise the same loop runs the kernels' plain-PyTorch references.
"""
from __future__ import annotations

import torch

from dawm_fast.sampling.generate import SamplingConfig, register_backend
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.fused_unet import fused_unet_forward
from dawm_fast.world_model.scheduler import DDIMScheduler, StepCoefficients
from kernels import triton_usable
from kernels.ddim_update import (condition_noise, condition_noise_reference, ddim_update,
                                 ddim_update_reference)


def _update_args(c: StepCoefficients) -> dict[str, float | None]:
    """The scheduler's step constants as the DDIM kernel's keyword arguments."""
    return dict(sqrt_recip_alpha=c.sqrt_recip_alpha, sqrt_recipm1_alpha=c.sqrt_recipm1_alpha,
                sqrt_alpha=c.sqrt_alpha, recip_sqrt_one_minus_alpha=c.recip_sqrt_one_minus_alpha,
                sqrt_alpha_prev=c.sqrt_alpha_prev, dir_coef=c.dir_coef, sigma=c.sigma,
                clip=c.clip)


def sample_fast(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                returns: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator, *,
                use_triton: bool | None = None) -> torch.Tensor:
    """Guided DDIM windows [B, T, C]; ``use_triton`` None = ``triton_usable(s0)``."""
    if use_triton is None:
        use_triton = triton_usable(s0)
    cond_fn = condition_noise if use_triton else condition_noise_reference
    update_fn = ddim_update if use_triton else ddim_update_reference
    b, dev, dt = s0.shape[0], s0.device, s0.dtype
    shape = (b, model.horizon, model.transition_dim)
    scheduler = DDIMScheduler(model.schedule_config, eta=cfg.eta)   # private: set_timesteps mutates
    timesteps = scheduler.set_timesteps(cfg.n_sampling_steps)

    z = torch.randn(shape, generator=generator, device=dev, dtype=dt)       # [B, T, C]
    x = cond_fn(z, s0, a0, cfg.temperature)                                 # [B, T, C]
    # Rows [0, B) use g, rows [B, 2B) drop it (the order the DDIM kernel expects in eps2).
    returns2 = torch.cat([returns, returns])                                # [2B]
    actions2 = torch.cat([a0, a0])                                          # [2B, act_dim]
    mask2 = torch.cat([torch.ones(b, device=dev, dtype=dt),
                       torch.zeros(b, device=dev, dtype=dt)])               # [2B]
    for i, t in enumerate(timesteps):
        t2 = torch.full((2 * b,), t, device=dev, dtype=torch.long)          # [2B]
        eps2 = fused_unet_forward(model.unet, torch.cat([x, x]), t2, returns2, actions2, mask2,
                                  use_triton=use_triton)                    # [2B, T, C]
        noise = None
        if cfg.eta > 0:
            # Unscaled: the kernel applies the temperature (noise_scale) exactly as
            # temperature * randn would.
            noise = torch.randn(shape, generator=generator, device=dev, dtype=dt)  # [B, T, C]
        x = update_fn(eps2, x, s0, a0, guidance_weight=cfg.guidance_weight, noise=noise,
                      noise_scale=cfg.temperature, **_update_args(scheduler.step_coefficients(i)))
    return x


def _sample_fast(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                 returns: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Registered backend: the SamplingBackend signature, kernel choice by device."""
    return sample_fast(model, s0, a0, returns, cfg, generator)


register_backend("fast", _sample_fast)
