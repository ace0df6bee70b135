"""Task registry: the one place that knows env families, dataset names and reference returns.

A *task* is a dataset name such as ``walker2d-medium-expert``: an env family (``walker2d``) and a
D4RL dataset kind (``medium-expert``). Everything that needs per-env constants (Gymnasium ids,
return-to-go scale, D4RL reference returns, health-based termination) reads them from here.
"""
from __future__ import annotations

from dataclasses import dataclass

DATASET_KINDS = ("medium", "medium-replay", "medium-expert", "expert")


@dataclass(frozen=True)
class EnvFamily:
    name: str               # "walker2d"
    gym_id_v5: str          # Gymnasium MuJoCo v5 env (Minari and embedded data were made on it)
    gym_id_v4: str          # closest Gymnasium env to D4RL's v2 dynamics (for D4RL files)
    obs_dim: int
    act_dim: int
    rtg_scale: float        # return-to-go divisor (DWM / Decision Diffuser convention)
    d4rl_min: float         # D4RL reference return of a random policy
    d4rl_max: float         # D4RL reference return of an expert policy
    # Health check for generated states (None: the env never terminates, e.g. halfcheetah).
    # Values follow Gymnasium's v5 defaults.
    healthy_z: tuple[float, float] | None = None
    healthy_angle: tuple[float, float] | None = None
    healthy_state: tuple[float, float] | None = None   # hopper: |state[1:]| bound
    # The v5 observation clips velocities to +-this (None: not clipped); an observation with a
    # velocity there does not pin down the simulator state.
    obs_velocity_clip: float | None = None


ENV_FAMILIES: dict[str, EnvFamily] = {
    "hopper": EnvFamily("hopper", "Hopper-v5", "Hopper-v4", 11, 3, 400.0, -20.272305, 3234.3,
                        healthy_z=(0.7, float("inf")), healthy_angle=(-0.2, 0.2),
                        healthy_state=(-100.0, 100.0), obs_velocity_clip=10.0),
    "walker2d": EnvFamily("walker2d", "Walker2d-v5", "Walker2d-v4", 17, 6, 550.0, 1.629008, 4592.3,
                          healthy_z=(0.8, 2.0), healthy_angle=(-1.0, 1.0),
                          obs_velocity_clip=10.0),
    "halfcheetah": EnvFamily("halfcheetah", "HalfCheetah-v5", "HalfCheetah-v4", 17, 6, 1200.0,
                             -280.178953, 12135.0),
}

TASK_NAMES: tuple[str, ...] = tuple(f"{e}-{k}" for e in ENV_FAMILIES for k in DATASET_KINDS)


class UnknownTaskError(ValueError):
    pass


def parse_task(name: str) -> tuple[EnvFamily, str]:
    """Split ``walker2d-medium-expert`` into (EnvFamily, "medium-expert"), or say what is valid."""
    env, _, kind = name.partition("-")
    if env not in ENV_FAMILIES or kind not in DATASET_KINDS:
        raise UnknownTaskError(
            f"unknown dataset name {name!r}; valid names: {', '.join(TASK_NAMES)}")
    return ENV_FAMILIES[env], kind


def env_family(name: str) -> EnvFamily:
    """EnvFamily from a family name ("hopper") or a task name ("hopper-medium")."""
    env = name.partition("-")[0]
    if env not in ENV_FAMILIES:
        raise UnknownTaskError(
            f"unknown env {name!r}; valid envs: {', '.join(ENV_FAMILIES)}")
    return ENV_FAMILIES[env]
