"""Guided DDIM sampling with the loop in C++ (``dawm_fast.ops.GraphSampler``).

Same function as ``generate._sample_reference`` and the same random numbers: Python draws them
from the caller's generator in the documented order (one initial ``randn((B, T, C))``, then one
per step only if eta > 0; the U-Net draws none, so drawing the step noises up front changes
nothing) and hands the raw draws to C++, which applies the temperature exactly as
``temperature * randn`` would. The scheduler constants come from ``DDIMScheduler`` itself.

On CUDA the whole loop (N forwards + N fused updates) is captured into one CUDA graph per input
signature and replayed: no Python runs per step. On CPU the C++ loop calls ``forward`` each step.

Graph caching: one ``GraphSampler`` per (model, forward callable), kept while both live; each
holds at most ``DEFAULT_MAX_GRAPHS`` graphs. Pass a ``forward`` object that lives as long as the
model (create it once): a new object per call (e.g. a fresh lambda) gets a new sampler and hence
a fresh capture every call. If the model's parameters or buffers move (``.to()``, new tensors),
the graphs are dropped and recaptured on the next call.
"""
from __future__ import annotations

import inspect
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dawm_fast.ops import load_extension
from dawm_fast.sampling.generate import SamplingConfig
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.fused_unet import refresh_banded_cache
from dawm_fast.world_model.scheduler import DDIMScheduler, StepCoefficients

DEFAULT_MAX_GRAPHS = 4
_MAX_FORWARDS_PER_MODEL = 2     # samplers (forward callables) kept per model, LRU

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                   torch.Tensor]


@dataclass
class _Entry:
    forward_ref: Callable[[], object]   # weak where possible: the cache must not keep it alive
    sampler: object                     # dawm_fast.ops.GraphSampler
    fingerprint: tuple[int, ...]        # data_ptr of every parameter and buffer at capture time


# model -> its samplers. Weak keys: a model's graphs go when the model goes. The entries hold the
# forward weakly and GraphSampler holds no Python object, so no entry keeps its model alive.
_SAMPLERS: weakref.WeakKeyDictionary[torch.nn.Module, list[_Entry]] = weakref.WeakKeyDictionary()


def _weak(obj: object) -> Callable[[], object]:
    if inspect.ismethod(obj):
        return weakref.WeakMethod(obj)
    try:
        return weakref.ref(obj)
    except TypeError:          # no weakref support (rare builtins): hold it
        return lambda: obj


def _same_forward(entry: _Entry, forward: object) -> bool:
    held = entry.forward_ref()
    # WeakMethod re-creates the bound method on each call, so methods compare by ==.
    return held is forward or (inspect.ismethod(forward) and held == forward)


def _fingerprint(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))


def graph_sampler_for(model: torch.nn.Module, forward: object,
                      max_graphs: int = DEFAULT_MAX_GRAPHS):
    """The cached ``GraphSampler`` of (model, forward), created on first use."""
    ext = load_extension()
    entries = _SAMPLERS.setdefault(model, [])
    fingerprint = _fingerprint(model)
    for i, entry in enumerate(entries):
        if _same_forward(entry, forward):
            entries.append(entries.pop(i))          # most recently used last
            if entry.fingerprint != fingerprint:    # parameters moved: graphs read stale memory
                entry.sampler.clear()
                entry.fingerprint = fingerprint
            return entry.sampler
    entries[:] = [e for e in entries if e.forward_ref() is not None]
    while len(entries) >= _MAX_FORWARDS_PER_MODEL:
        entries.pop(0)
    entry = _Entry(_weak(forward), ext.GraphSampler(max_graphs), fingerprint)
    entries.append(entry)
    return entry.sampler


def _coef_tuple(c: StepCoefficients) -> tuple[float, ...]:
    return (c.sqrt_recip_alpha, c.sqrt_recipm1_alpha, c.sqrt_alpha, c.recip_sqrt_one_minus_alpha,
            c.sqrt_alpha_prev, c.dir_coef, c.sigma)


def sample_cpp(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
               returns: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator,
               forward: Forward | None = None, use_cuda_graph: bool | None = None, *,
               sampler=None) -> torch.Tensor:
    """Guided DDIM windows x [B, T, C] from s0 [B, obs_dim], a0 [B, act_dim], returns [B]
    (float32, on the model's device), equal to ``sample_windows(..., backend="reference")``.

    ``forward(x2, t2, returns2, actions2, mask2) -> eps2`` defaults to ``model.predict_eps``.
    ``use_cuda_graph``: None = on for CUDA tensors, off on CPU; True on CPU tensors is an error.
    ``sampler``: a ``dawm_fast.ops.GraphSampler`` to use instead of the cached one of
    (model, forward), e.g. one with its own ``max_graphs``.
    """
    if use_cuda_graph and not s0.is_cuda:
        raise ValueError(f"use_cuda_graph=True needs CUDA tensors; s0 is on {s0.device}")
    if use_cuda_graph is None:
        use_cuda_graph = s0.is_cuda
    if forward is None:
        forward = model.predict_eps
    if sampler is None:
        sampler = graph_sampler_for(model, forward)     # loads (or builds) the extension first

    b, dev, dt = s0.shape[0], s0.device, s0.dtype
    shape = (b, model.horizon, model.transition_dim)
    scheduler = DDIMScheduler(model.schedule_config, eta=cfg.eta)   # private: set_timesteps mutates
    timesteps = scheduler.set_timesteps(cfg.n_sampling_steps)
    coefs = [scheduler.step_coefficients(i) for i in range(len(timesteps))]

    # The documented draw order; the temperature is applied in C++ (same float32 rounding).
    noise = torch.randn(shape, generator=generator, device=dev, dtype=dt)           # [B, T, C]
    step_noise = None
    if cfg.eta > 0:
        step_noise = torch.stack([torch.randn(shape, generator=generator, device=dev, dtype=dt)
                                  for _ in timesteps])                              # [N, B, T, C]
    if use_cuda_graph:
        # Graphs captured on cached banded matrices must see weights changed since (an EMA
        # update, load_state_dict): rebuild this model's stale ones in place before the replay.
        refresh_banded_cache(model)
    with torch.no_grad():
        return sampler.sample(forward, s0, a0, returns, noise, step_noise, timesteps,
                              [_coef_tuple(c) for c in coefs], coefs[0].clip,
                              cfg.guidance_weight, cfg.temperature,
                              use_cuda_graph=bool(use_cuda_graph))
