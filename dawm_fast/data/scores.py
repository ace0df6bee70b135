"""Normalized scores on the x100 scale, always with the reference returns they used."""
from __future__ import annotations

import numpy as np

from .tasks import env_family


def _fmt(x: float) -> str:
    return f"{round(x, 2):g}"


def normalized_score(env_name: str, returns, ref_min: float | None = None,
                     ref_max: float | None = None) -> tuple[np.ndarray, str]:
    """100 * (return - ref_min) / (ref_max - ref_min), and a label naming the reference.

    Default reference: D4RL's random/expert returns of the env family (``env_name`` may be a
    family, a dataset name or a Gymnasium id: "hopper", "hopper-medium", "Hopper-v5").
    With ``ref_min``/``ref_max``: the given dataset's own reference returns.
    """
    if (ref_min is None) != (ref_max is None):
        raise ValueError("give both ref_min and ref_max, or neither (D4RL reference)")
    if ref_min is None:
        fam = env_family(env_name.lower())
        lo, hi = fam.d4rl_min, fam.d4rl_max
        label = f"D4RL ({fam.name}: random {_fmt(lo)}, expert {_fmt(hi)})"
    else:
        lo, hi = float(ref_min), float(ref_max)
        label = f"dataset (min {_fmt(lo)}, max {_fmt(hi)})"
    if not hi > lo:
        raise ValueError(f"reference max {hi} must exceed reference min {lo}")
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return scores, label
