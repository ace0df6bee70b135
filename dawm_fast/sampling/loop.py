"""The guided DDIM sampling loop, written once, and the step functions it runs.

``guided_loop(step, ...)`` is the loop of every backend: per DDIM step one 2B forward (rows
[0, B) with the return g, rows [B, 2B) without it; the action embedding in both) and one update
from the guided eps. A step supplies ``eps`` (the network), ``start`` (the initial window from
the raw noise) and ``update`` (guidance, scheduler step, conditioning):

* ``ReferenceStep``: the scheduler, the guidance arithmetic and the conditioning in plain
  PyTorch, with the model's own U-Net: the specification;
* ``dawm_fast.sampling.fast.FastStep``: the same function as ops (``condition_noise``,
  ``ddim_guided_update``) around the U-Net with fused blocks. On CUDA the C++ GraphSampler
  captures this loop as one CUDA graph and replays it.

Random numbers: the caller draws them (``draw_noise``) from its generator in the documented
order (generate.py) and hands the raw draws in; the network draws none, so drawing the step
noises up front is the same as drawing them step by step. The temperature is applied by the step
(``temperature * z``, rounded as the reference rounds it).
"""
from __future__ import annotations

from typing import Protocol

import torch

from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.scheduler import DDIMScheduler


class GuidedStep(Protocol):
    timesteps: list[int]

    def eps(self, x2: torch.Tensor, t2: torch.Tensor, returns2: torch.Tensor,
            actions2: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor: ...

    def start(self, z: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor) -> torch.Tensor: ...

    def update(self, i: int, eps2: torch.Tensor, x: torch.Tensor, s0: torch.Tensor,
               a0: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor: ...


def draw_noise(shape: tuple[int, ...], n_steps: int, eta: float, generator: torch.Generator,
               like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The raw draws of one sampling call: the initial randn [B, T, C], then one per step
    [N, B, T, C] only if eta > 0 (the last step's too, although its sigma is 0)."""
    kw = dict(generator=generator, device=like.device, dtype=like.dtype)   # like s0
    noise = torch.randn(shape, **kw)                                              # [B, T, C]
    step_noise = None
    if eta > 0:
        step_noise = torch.stack([torch.randn(shape, **kw) for _ in range(n_steps)])  # [N,B,T,C]
    return noise, step_noise


def guided_loop(step: GuidedStep, s0: torch.Tensor, a0: torch.Tensor, returns: torch.Tensor,
                noise: torch.Tensor, step_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Guided DDIM windows x [B, T, C] from s0 [B, obs_dim], a0 [B, act_dim], returns [B] and the
    raw draws noise [B, T, C], step_noise [N, B, T, C] or None."""
    b, dev, dt = s0.shape[0], s0.device, s0.dtype
    x = step.start(noise, s0, a0)                                            # [B, T, C]
    returns2 = torch.cat([returns, returns])                                 # [2B]
    actions2 = torch.cat([a0, a0])                                           # [2B, act_dim]
    mask2 = torch.cat([torch.ones(b, device=dev, dtype=dt),
                       torch.zeros(b, device=dev, dtype=dt)])                # [2B]
    for i, t in enumerate(step.timesteps):
        t2 = torch.full((2 * b,), t, device=dev, dtype=torch.long)           # [2B]
        eps2 = step.eps(torch.cat([x, x]), t2, returns2, actions2, mask2)    # [2B, T, C] fp32
        x = step.update(i, eps2, x, s0, a0, None if step_noise is None else step_noise[i])
    return x


class ReferenceStep:
    """Scheduler, guidance and conditioning in plain PyTorch around the model's U-Net."""

    def __init__(self, model: DiffusionWorldModel, cfg):
        self.model, self.cfg = model, cfg
        self.scheduler = DDIMScheduler(model.schedule_config, eta=cfg.eta)  # private: mutated
        self.timesteps = self.scheduler.set_timesteps(cfg.n_sampling_steps)

    def eps(self, x2, t2, returns2, actions2, mask2):
        return self.model.predict_eps(x2, t2, returns2, actions2, mask2, bf16=self.cfg.bf16)

    def start(self, z, s0, a0):
        return self.model.conditioning(self.cfg.temperature * z, s0, a0)

    def update(self, i, eps2, x, s0, a0, z):
        w = self.cfg.guidance_weight
        eps_cond, eps_uncond = eps2.chunk(2)                                 # [B, T, C] each
        eps = w * eps_cond + (1.0 - w) * eps_uncond
        noise = None if z is None else self.cfg.temperature * z
        x = self.scheduler.step(eps, i, x, noise).prev_sample
        return self.model.conditioning(x, s0, a0)
