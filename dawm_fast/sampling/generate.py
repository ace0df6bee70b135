"""The one sampling entry point: guided DDIM windows -> synthetic transitions for offline RL.

Backend dispatch lives only here (``_BACKENDS``). Both built-in backends run the one guided loop
(``loop.guided_loop``) with their step: "reference" the plain-PyTorch step, "fast" the ops
(``fast.py``, registered on import). Any backend must reproduce the reference numerically,
drawing the same random numbers from the caller's generator in the same order:

  1. initial noise: ONE ``torch.randn((B, T, C), generator=g)`` call, times ``temperature``;
  2. only if eta > 0: for every step index i = 0..N-1 (the last one included, although its sigma
     is 0), ONE ``torch.randn((B, T, C), generator=g)`` call, times ``temperature``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dawm_fast.data.tasks import EnvFamily
from dawm_fast.world_model.diffusion import DiffusionWorldModel
from dawm_fast.world_model.idm import InverseDynamics
from dawm_fast.sampling.loop import ReferenceStep, draw_noise, guided_loop


@dataclass(frozen=True)
class SamplingConfig:
    n_sampling_steps: int = 3           # N DDIM steps out of the K training levels
    guidance_weight: float = 1.2        # w: eps = w * eps(g) + (1 - w) * eps(no g)
    temperature: float = 0.5            # scales the initial noise and any eta noise
    eta: float = 0.0                    # DDIM eta; 0 = deterministic given the initial noise
    batch_size: int = 4096              # windows per sample_windows call in generate_transitions
    # U-Net forwards under bf16 autocast (the DDIM state and update stay fp32). Off by default: a
    # GPU speed option whose samples differ from fp32 by bf16 rounding, amplified per step.
    bf16: bool = False
    # Drop a generated step whose next state is unhealthy only at the x0 clip bound (and the rest
    # of its window) instead of making it a terminal transition: see generate_transitions.
    drop_clipped_terminals: bool = True
    # Step 0's reward r_t from the dataset instead of the generated one: the pair (s_t, a_t) of a
    # window's first transition is real, so its reward is known (the generated step-0 reward was
    # the worst of the window: RMSE 3-4x the later steps' on every env, RESULTS.md).
    real_first_reward: bool = True


SamplingBackend = Callable[
    [DiffusionWorldModel, torch.Tensor, torch.Tensor, torch.Tensor, SamplingConfig,
     torch.Generator], torch.Tensor]


def _sample_reference(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                      returns: torch.Tensor, cfg: SamplingConfig,
                      generator: torch.Generator) -> torch.Tensor:
    """The guided loop with the plain-PyTorch step; both guidance branches share one 2B forward
    per step."""
    step = ReferenceStep(model, cfg)
    shape = (s0.shape[0], model.horizon, model.transition_dim)
    return guided_loop(step, s0, a0, returns,
                       *draw_noise(shape, len(step.timesteps), cfg.eta, generator, s0))


_BACKENDS: dict[str, SamplingBackend] = {"reference": _sample_reference}


def register_backend(name: str, fn: SamplingBackend, *, replace: bool = False) -> None:
    """Make ``fn`` selectable as ``backend=name`` (the fast path calls this on import)."""
    if name in _BACKENDS and not replace:
        raise ValueError(f"sampling backend {name!r} is already registered")
    _BACKENDS[name] = fn


def available_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sample_windows(model: DiffusionWorldModel, s0: torch.Tensor, a0: torch.Tensor,
                   returns: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator,
                   backend: str = "reference") -> torch.Tensor:
    """Guided DDIM sample of windows x [B, T, C] given normalized s0 [B, obs_dim],
    a0 [B, act_dim] and returns [B]. Step 0 of the output holds (s0, a0); future actions are 0.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown sampling backend {backend!r}; valid backends: "
                         f"{', '.join(_BACKENDS)}")
    dev = _model_device(model)
    if generator.device.type != dev.type:
        raise ValueError(f"generator is on {generator.device}, model on {dev}")
    s0 = torch.as_tensor(s0, dtype=torch.float32, device=dev)
    a0 = torch.as_tensor(a0, dtype=torch.float32, device=dev)
    returns = torch.as_tensor(returns, dtype=torch.float32, device=dev).reshape(-1)
    b = s0.shape[0]
    if s0.shape != (b, model.obs_dim) or a0.shape != (b, model.act_dim) or returns.shape != (b,):
        raise ValueError(f"expected s0 [B, {model.obs_dim}], a0 [B, {model.act_dim}], returns [B];"
                         f" got {tuple(s0.shape)}, {tuple(a0.shape)}, {tuple(returns.shape)}")
    with torch.no_grad():
        return _BACKENDS[backend](model, s0, a0, returns, cfg, generator)


def failed_health_checks(family: EnvFamily, states: torch.Tensor) -> torch.Tensor:
    """Gymnasium v5 health check on raw observations [N, obs_dim] -> bool [N, obs_dim]: which
    values break a bound (a state is healthy iff none does).

    Observations exclude the x position, so state[0] is the torso height z and state[1] its
    angle; hopper's state bound covers state[1:] (= state_vector()[2:]). Bounds are strict.
    """
    failed = torch.zeros(states.shape, dtype=torch.bool, device=states.device)
    if family.healthy_z is not None:
        lo, hi = family.healthy_z
        failed[:, 0] |= (states[:, 0] <= lo) | (states[:, 0] >= hi)
    if family.healthy_angle is not None:
        lo, hi = family.healthy_angle
        failed[:, 1] |= (states[:, 1] <= lo) | (states[:, 1] >= hi)
    if family.healthy_state is not None:
        lo, hi = family.healthy_state
        failed[:, 1:] |= (states[:, 1:] <= lo) | (states[:, 1:] >= hi)
    return failed


def healthy(family: EnvFamily, states: torch.Tensor) -> torch.Tensor:
    """Gymnasium v5 health check on raw observations [N, obs_dim] -> bool [N]."""
    return ~failed_health_checks(family, states).any(dim=-1)


def generate_transitions(model: DiffusionWorldModel, idm: InverseDynamics,
                         s0: torch.Tensor, a0: torch.Tensor, returns: torch.Tensor,
                         family: EnvFamily,
                         unnormalize_states: Callable[[torch.Tensor], torch.Tensor],
                         unnormalize_rewards: Callable[[torch.Tensor], torch.Tensor],
                         cfg: SamplingConfig, generator: torch.Generator,
                         backend: str = "reference",
                         next_states: torch.Tensor | None = None,
                         first_rewards: torch.Tensor | None = None) -> dict:
    """Synthetic transitions from guided windows, chunked by ``cfg.batch_size``.

    s0 [N, obs_dim], a0 [N, act_dim], returns [N] are normalized. ``unnormalize_states`` maps a
    torch tensor [M, obs_dim] and ``unnormalize_rewards`` a torch tensor [M] to raw values (torch
    tensors; numpy arrays are accepted back). Each window yields transitions for steps
    i = 0..T-2: (s_i, a_i, r_i, s_{i+1}) with a_0 = the real conditioning a_t and a_i = IDM(s_i,
    s_{i+1}) (normalized space) for i >= 1. A transition whose raw next state is unhealthy gets
    terminal = 1 and ends its window (unless only the x0 clip made it unhealthy: see below).
    Returns float32 numpy arrays observations, actions, rewards, next_observations, terminals
    (0/1), ordered window by window, and numbers that say how much to trust them:
    ``action_consistency``: per-element MSE between IDM(s_t, s_1) and a_t over all windows;
    ``one_step_state_mse``: per-element MSE (normalized space) between the generated s_1 and the
    real next states ``next_states`` [N, obs_dim] (normalized), NaN without them;
    ``clipped_fraction``: share of generated future state values at the x0 clip bound (a world
    model that has not learned a region puts its samples there); and the int
    ``dropped_clipped_terminals``: windows cut at a fall that only the clip made
    (``cfg.drop_clipped_terminals``).
    """
    dev = _model_device(model)
    s0 = torch.as_tensor(s0, dtype=torch.float32, device=dev)
    a0 = torch.as_tensor(a0, dtype=torch.float32, device=dev)
    returns = torch.as_tensor(returns, dtype=torch.float32, device=dev).reshape(-1)
    n, o, a, t_len = s0.shape[0], model.obs_dim, model.act_dim, model.horizon
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("observations", "actions", "rewards",
                                           "next_observations", "terminals")}
    if next_states is not None:
        next_states = torch.as_tensor(next_states, dtype=torch.float32, device=dev)
    if cfg.real_first_reward and first_rewards is not None:
        first_rewards = torch.as_tensor(first_rewards, dtype=torch.float32,
                                        device=dev).reshape(-1)
        if first_rewards.shape[0] != n:
            raise ValueError(f"first_rewards has {first_rewards.shape[0]} entries for {n} starts")
    else:
        first_rewards = None
    sched = model.schedule_config
    clip_bound = sched.clip_range * (1 - 1e-6) if sched.clip_sample else float("inf")
    sq_err, n_err = 0.0, 0
    step_err, n_step, n_clipped, n_future, n_doubtful = 0.0, 0, 0, 0, 0
    for lo in range(0, n, cfg.batch_size):
        s0c, a0c, gc = s0[lo:lo + cfg.batch_size], a0[lo:lo + cfg.batch_size], \
            returns[lo:lo + cfg.batch_size]
        b = s0c.shape[0]
        x = sample_windows(model, s0c, a0c, gc, cfg, generator, backend)    # [b, T, C]
        with torch.no_grad():
            states = x[:, :, :o]                                             # [b, T, o]
            rewards = x[:, :, -1]                                            # [b, T]
            first_idm = idm(states[:, 0], states[:, 1])                      # [b, a]
            sq_err += float(((first_idm - a0c) ** 2).sum())
            n_err += first_idm.numel()
            if next_states is not None:
                real_next = next_states[lo:lo + cfg.batch_size]                  # [b, o]
                step_err += float(((states[:, 1] - real_next) ** 2).sum())
                n_step += real_next.numel()
            at_bound = states[:, 1:].abs() >= clip_bound                     # [b, T-1, o]
            n_clipped += int(at_bound.sum())
            n_future += at_bound.numel()
            acts = torch.empty(b, t_len - 1, a, device=dev)                  # [b, T-1, a]
            acts[:, 0] = a0c
            if t_len > 2:
                inner = idm(states[:, 1:-1].reshape(-1, o), states[:, 2:].reshape(-1, o))
                acts[:, 1:] = inner.reshape(b, t_len - 2, a)
            raw_s = torch.as_tensor(unnormalize_states(states.reshape(-1, o)),
                                    device=dev, dtype=torch.float32).reshape(b, t_len, o)
            raw_r = torch.as_tensor(unnormalize_rewards(rewards.reshape(-1)),
                                    device=dev, dtype=torch.float32).reshape(b, t_len)
            if first_rewards is not None:
                raw_r[:, 0] = first_rewards[lo:lo + cfg.batch_size]
            nxt = raw_s[:, 1:]                                               # [b, T-1, o]
            failed = failed_health_checks(family, nxt.reshape(-1, o)).reshape(b, t_len - 1, o)
            unhealthy = failed.any(dim=-1)                                   # [b, T-1]
            # A next state that breaks a health bound only with values at the x0 clip bound is
            # not trusted as a fall: the clip maps any overshoot to the data's most extreme
            # value, which for the torso height or angle IS a fall (cpu preset, walker2d: 98% of
            # synthetic terminals, 5x the real rate). With cfg.drop_clipped_terminals such a step
            # and the rest of its window are dropped. A state with a failing value off the bound
            # stays a real terminal, whatever other (unchecked) values sit at the bound.
            doubtful = unhealthy & ~(failed & ~at_bound).any(dim=-1) \
                if cfg.drop_clipped_terminals else torch.zeros_like(unhealthy)
            term = unhealthy & ~doubtful
            # keep step i iff no terminal or doubtful step strictly before i, and i not doubtful
            stop = (term | doubtful).long()
            before = stop.cumsum(dim=1) - stop
            keep = (before == 0) & ~doubtful                                 # [b, T-1]
            n_doubtful += int((doubtful & (before == 0)).sum())             # windows cut there
            for key, val in (("observations", raw_s[:, :-1]), ("actions", acts),
                             ("rewards", raw_r[:, :-1]), ("next_observations", nxt),
                             ("terminals", term.float())):
                parts[key].append(val[keep].cpu().numpy().astype(np.float32))
    out = {k: (np.concatenate(v) if v else np.zeros((0,) + shp, np.float32))
           for (k, v), shp in zip(parts.items(), [(o,), (a,), (), (o,), ()])}
    out["action_consistency"] = sq_err / n_err if n_err else float("nan")
    out["one_step_state_mse"] = step_err / n_step if n_step else float("nan")
    out["clipped_fraction"] = n_clipped / n_future if n_future else float("nan")
    out["dropped_clipped_terminals"] = n_doubtful
    return out
