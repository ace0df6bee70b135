"""The "fast" sampling backend: fused U-Net epilogues and a fused guided DDIM update per step.

Same function as ``generate._sample_reference`` and the same random numbers, drawn from the
caller's generator in the documented order (one initial randn, then one per step only if
eta > 0). Per step: one fused 2B U-Net forward, then one kernel that combines the guidance
branches, applies the scheduler's update and writes the conditioning.

Whether the Triton kernels run is decided by ``kernels.triton_usable`` (CUDA, or CPU under
TRITON_INTERPRET=1); otherwise the same loop runs the kernels' plain-PyTorch references.
"""
from __future__ import annotations

import functools
import weakref

import torch

from dawm_fast.sampling.generate import SamplingConfig, register_backend
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.fused_unet import fused_unet_forward
from dawm_fast.world_model.scheduler import DDIMScheduler
from dawm_fast.ops import has_ops, step_kwargs
from dawm_fast.sampling.cpp_loop import sample_cpp
from dawm_fast.kernels import HAS_TRITON, triton_usable
from dawm_fast.kernels.ddim_update import (condition_noise, condition_noise_reference, ddim_update,
                                 ddim_update_reference)


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
        eps2 = _eps_forward(model, use_triton, cfg.bf16, torch.cat([x, x]), t2, returns2,
                            actions2, mask2)                                # [2B, T, C]
        noise = None
        if cfg.eta > 0:
            # Unscaled: the kernel applies the temperature (noise_scale) exactly as
            # temperature * randn would.
            noise = torch.randn(shape, generator=generator, device=dev, dtype=dt)  # [B, T, C]
        x = update_fn(eps2, x, s0, a0, guidance_weight=cfg.guidance_weight, noise=noise,
                      noise_scale=cfg.temperature, **step_kwargs(scheduler.step_coefficients(i)))
    return x


def _eps_forward(model, use_triton: bool, bf16: bool, x2, t2, returns2, actions2, mask2):
    """One fused 2B forward -> fp32 eps2 (``predict_eps``: bf16 autocast when asked, an x0 output
    converted)."""
    unet_forward = functools.partial(fused_unet_forward, model.unet, use_triton=use_triton)
    return model.predict_eps(x2, t2, returns2, actions2, mask2, forward=unet_forward, bf16=bf16)


# One forward callable per (model, kernel choice, precision), alive as long as the model: the C++
# sampler caches its CUDA graphs per forward object, so a fresh partial per call would recapture
# (and one object for both precisions would replay an fp32 graph for a bf16 call).
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward_for(model: DiffusionWorldModel, use_triton: bool, bf16: bool):
    per_model = _FORWARDS.setdefault(model, {})
    if (use_triton, bf16) not in per_model:
        # The cached callable holds its model weakly: a strong reference from this weak-keyed
        # cache's value would keep the model alive forever.
        model_ref = weakref.ref(model)
        per_model[(use_triton, bf16)] = lambda *inputs: _eps_forward(model_ref(), use_triton,
                                                                     bf16, *inputs)
    return per_model[(use_triton, bf16)]


def _sample_fast(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                 returns: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Registered "fast" backend.

    CUDA: the C++ loop (dawm_fast.ops.GraphSampler) captured as one CUDA graph around the
    Triton-fused U-Net. CPU: the same C++ loop and fused update around the U-Net with plain-PyTorch
    epilogues (Triton runs on a CPU only under its interpreter, which is for tests, not for work).
    Without the compiled extension (no compiler): this module's Python loop, same kernels.
    """
    use_triton = bool(s0.is_cuda and HAS_TRITON)
    if not has_ops():
        return sample_fast(model, s0, a0, returns, cfg, generator, use_triton=use_triton)
    return sample_cpp(model, s0, a0, returns, cfg, generator,
                      forward=_forward_for(model, use_triton, cfg.bf16))


register_backend("fast", _sample_fast)
