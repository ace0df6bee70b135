"""The one place that turns a backend name into the objects that run it.

`--backend auto` (the default) resolves here, once, before a run starts: "fast" where it runs (the
C++ extension loads, with CUDA kernels when the device is a GPU), else "reference". A run's config
keeps the resolved name, and its header prints why. Sampling backends are looked up by name in
`dawm_fast.sampling`; the world-model trainer and the RL agent are chosen below.
"""
from __future__ import annotations

import torch

from dawm_fast.ops import ExtensionUnavailable, load_extension
from dawm_fast.rl.fast_updates import FastIQL, FastTD3BC
from dawm_fast.rl.iql import IQL
from dawm_fast.rl.td3bc import TD3BC
from dawm_fast.world_model import WorldModelTrainer
from dawm_fast.world_model.fast_training import FastWorldModelTrainer


class BackendUnavailable(RuntimeError):
    """The named backend cannot run here; the message says why."""


def resolve_backend(requested: str, device: str | torch.device) -> tuple[str, str]:
    """(backend, why) for `requested` in {"auto", "fast", "reference"} on `device`. "fast"
    asked for where it cannot run raises BackendUnavailable."""
    device = torch.device(device)
    if requested == "reference":
        return "reference", "asked for"
    problem = _fast_problem(device)
    if requested == "fast":
        if problem:
            raise BackendUnavailable(f"the fast backend cannot run here: {problem}")
        return "fast", "asked for"
    if requested != "auto":
        raise BackendUnavailable(f"unknown backend {requested!r}; valid: auto, fast, reference")
    if problem:
        return "reference", f"auto: {problem}"
    where = ("CUDA graphs and Triton kernels" if device.type == "cuda" else
             "C++ CPU kernels and banded GEMMs")
    return "fast", f"auto: the C++ extension loads; {where}"


def _fast_problem(device: torch.device) -> str | None:
    """Why the fast backend cannot run on `device`, or None when it can."""
    if device.type not in ("cpu", "cuda"):
        return f"no fast kernels for device type {device.type}"
    try:
        ext = load_extension()
    except ExtensionUnavailable as e:
        return f"the C++ extension is unavailable ({str(e).splitlines()[0]})"
    if device.type == "cuda" and not ext.with_cuda():
        return "the C++ extension was built without CUDA"
    return None


def world_model_trainer(backend: str, model, cfg, *, seed: int, shard=None):
    """The world-model trainer of `backend`. Data-parallel training (a `shard`) runs the eager
    step on every backend: the CUDA-graph step does not capture DDP's gradient all-reduce."""
    if shard is not None or backend != "fast":
        return WorldModelTrainer(model, cfg, shard=shard, seed=seed)
    return FastWorldModelTrainer(model, cfg, seed=seed)


def rl_agent(backend: str, algo: str, obs_dim: int, act_dim: int, cfg, device, mean, std, *,
             seed: int, gamma: float, total_steps: int):
    """The TD3+BC or IQL agent of `backend` (same networks, state_dict and numbers up to float
    rounding; the fast one updates through fused optimizers and, on CUDA, graphs)."""
    fast = backend == "fast"
    if algo == "td3bc":
        cls = FastTD3BC if fast else TD3BC
        return cls(obs_dim, act_dim, cfg, device, mean, std, seed=seed, gamma=gamma)
    cls = FastIQL if fast else IQL
    return cls(obs_dim, act_dim, cfg, device, mean, std, seed=seed, gamma=gamma,
               total_steps=total_steps)
