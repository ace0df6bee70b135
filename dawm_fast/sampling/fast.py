"""The "fast" sampling backend: the guided loop with its step as ops, around fused U-Net blocks.

Same function as the reference backend and the same random numbers (``loop.draw_noise``). Per
DDIM step: one 2B forward of the U-Net with fused blocks (``fused_copy``: the model's parameters,
the model itself untouched), then one ``ddim_guided_update`` op that combines the guidance
branches, applies the scheduler's update and writes the conditioning. One path per device:

* CUDA: the loop captured once per input signature and constants as one CUDA graph by the C++
  ``GraphSampler`` and replayed (no Python per step); the ops run their Triton kernels;
* CPU: the loop runs eagerly; the ops run their C++ kernels.

Both need the C++ extension (``dawm_fast.ops``; ``ExtensionUnavailable`` without it).
Per model, kept while it lives: the fused U-Net (its blocks own their banded matrices) and on
CUDA one GraphSampler. A new U-Net object, or parameters that moved or were replaced, make both
anew (graphs read parameters at their addresses at capture time).
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import torch

from dawm_fast import ops
from dawm_fast.sampling.generate import SamplingConfig, register_backend
from dawm_fast.sampling.loop import draw_noise, guided_loop
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.fused_unet import fused_copy, refresh_banded_
from dawm_fast.world_model.scheduler import DDIMScheduler

DEFAULT_MAX_GRAPHS = 4


@dataclass
class _Fused:
    fingerprint: tuple          # the U-Net object, every parameter and buffer object and address
    unet: torch.nn.Module       # fused_copy(model.unet)
    graphs: object | None       # dawm_fast.ops.GraphSampler, made on first CUDA use


# model -> its fused parts. Weak keys: they go when the model goes (the parts share the model's
# parameters but hold no reference to the model).
_FUSED: weakref.WeakKeyDictionary[torch.nn.Module, _Fused] = weakref.WeakKeyDictionary()


def _fingerprint(model: DiffusionWorldModel) -> tuple:
    return (id(model.unet),) + tuple((id(t), t.data_ptr()) for t in
                                     itertools.chain(model.parameters(), model.buffers()))


def fused_parts(model: DiffusionWorldModel) -> _Fused:
    """The model's fused U-Net (and GraphSampler), made anew when the model changed under it."""
    fingerprint = _fingerprint(model)
    parts = _FUSED.get(model)
    if parts is None or parts.fingerprint != fingerprint:
        if parts is not None and parts.graphs is not None:
            parts.graphs.clear()
        parts = _FUSED[model] = _Fused(fingerprint, fused_copy(model.unet), None)
    return parts


class FastStep:
    """The step as ops: ``condition_noise``, the fused U-Net, ``ddim_guided_update``."""

    def __init__(self, model: DiffusionWorldModel, cfg: SamplingConfig):
        ops.load_extension()
        self.model, self.cfg = model, cfg
        self.unet = fused_parts(model).unet
        scheduler = DDIMScheduler(model.schedule_config, eta=cfg.eta)
        self.timesteps = scheduler.set_timesteps(cfg.n_sampling_steps)
        self.coefs = [scheduler.step_coefficients(i) for i in range(len(self.timesteps))]

    def eps(self, x2, t2, returns2, actions2, mask2):
        return self.model.predict_eps(x2, t2, returns2, actions2, mask2, forward=self.unet,
                                      bf16=self.cfg.bf16)

    def start(self, z, s0, a0):
        return ops.condition_noise(z, s0, a0, self.cfg.temperature)

    def update(self, i, eps2, x, s0, a0, z):
        # z unscaled: the op applies the temperature (noise_scale) as temperature * randn would
        return ops.ddim_guided_update(eps2, x, s0, a0, guidance_weight=self.cfg.guidance_weight,
                                      noise=z, noise_scale=self.cfg.temperature,
                                      **ops.step_kwargs(self.coefs[i]))

    def graph_key(self) -> str:
        """Everything the loop bakes into a CUDA graph besides the inputs' shapes."""
        c = self.cfg
        consts = [c.guidance_weight, c.temperature,
                  float("nan") if self.coefs[0].clip is None else self.coefs[0].clip]
        for k in self.coefs:
            consts += [k.t, k.sqrt_recip_alpha, k.sqrt_recipm1_alpha, k.sqrt_alpha,
                       k.recip_sqrt_one_minus_alpha, k.sqrt_alpha_prev, k.dir_coef, k.sigma]
        return f"bf16={int(c.bf16)} " + " ".join(float(v).hex() for v in consts)


def _sample_fast(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                 returns: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Registered "fast" backend."""
    step = FastStep(model, cfg)
    shape = (s0.shape[0], model.horizon, model.transition_dim)
    inputs = [s0.contiguous(), a0.contiguous(), returns.contiguous(),
              *(t for t in draw_noise(shape, len(step.timesteps), cfg.eta, generator, s0)
                if t is not None)]
    if not s0.is_cuda:
        return guided_loop(step, *inputs)
    parts = fused_parts(model)
    if parts.graphs is None:
        parts.graphs = ops.GraphSampler(DEFAULT_MAX_GRAPHS)
    # A replay reads the blocks' cached banded matrices without running their Python: rebuild
    # the stale ones (weights changed since: an EMA update, load_state_dict) in place first.
    refresh_banded_(parts.unet)
    return parts.graphs.replay(lambda *tensors: guided_loop(step, *tensors), inputs,
                               step.graph_key())


register_backend("fast", _sample_fast)
