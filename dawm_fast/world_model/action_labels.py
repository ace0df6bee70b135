"""Who labels the actions of synthetic transitions: the IDM (DAWM), or, for the referee's ablation,
a behaviour-cloning policy or uniform noise, on the same synthetic states and rewards.

Only the actions the IDM inferred are relabelled. A window's first transition carries the real
a_t it was generated from; its later transitions have IDM actions. synthetic.npz is stored window
by window, and within a window each row's observation is the previous row's next observation
(both are the same generated tensor), so a row whose observation differs from the previous row's
next observation starts a window (evaluation.dynamics_check.window_positions).
"""
from __future__ import annotations

import numpy as np
import torch

from dawm_fast.evaluation.dynamics_check import window_positions
from dawm_fast.world_model.idm import InverseDynamicsConfig, train_inverse_dynamics

ACTION_SOURCES = ("idm", "bc", "random")


def behaviour_cloning_policy(obs_normalized: np.ndarray, actions: np.ndarray,
                             cfg: InverseDynamicsConfig, device, *, seed: int = 0):
    """pi(s) with the IDM's network and training budget, its next-state input held at zero: an
    MLP on s alone, so the ablation differs from DAWM only in what the labeller sees."""
    zeros = np.zeros_like(obs_normalized)
    model, report = train_inverse_dynamics(obs_normalized, zeros, actions, cfg, device=device,
                                           seed=seed)

    @torch.no_grad()
    def act(obs_norm: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(obs_norm, dtype=torch.float32, device=device)
        return model(s, torch.zeros_like(s)).cpu().numpy()
    return act, report


def relabel(source: str, syn: dict, normalize_states, real_obs: np.ndarray,
            real_actions: np.ndarray, idm_cfg: InverseDynamicsConfig, seed: int,
            device) -> tuple[np.ndarray, dict]:
    """New actions for the synthetic rows the IDM labelled, from `source` ("bc" | "random"),
    and how far the labeller is from the real a_t on the window-start rows (where a_t is known:
    the same measure as the generation stage's action consistency). ``seed`` seeds the uniform
    draws ("random") or the BC policy's training ("bc")."""
    if source not in ("bc", "random"):
        raise ValueError(f"unknown synthetic action source {source!r}; valid: "
                         f"{', '.join(ACTION_SOURCES)}")
    obs, actions = syn["observations"], syn["actions"]
    starts = window_positions(obs, syn["next_observations"]) == 0
    if source == "random":
        rng = np.random.default_rng(seed)
        labels = rng.uniform(-1.0, 1.0, actions.shape).astype(np.float32)
        info = {}
    else:
        act, report = behaviour_cloning_policy(normalize_states(real_obs), real_actions,
                                               idm_cfg, device, seed=seed)
        labels = act(normalize_states(obs)).astype(np.float32) if len(obs) else actions.copy()
        info = {"bc_heldout_action_mse": report.heldout_mse}
    new = np.where(starts[:, None], actions, labels)
    err = float(((labels[starts] - actions[starts]) ** 2).mean()) if starts.any() else float("nan")
    info.update(synthetic_actions=source, relabelled_rows=int((~starts).sum()),
                label_action_mse=err)
    return new, info
