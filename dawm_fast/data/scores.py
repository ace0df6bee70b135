"""Normalized scores on the x100 scale, always with the reference returns they used."""
from __future__ import annotations

import numpy as np

from .tasks import env_family


def normalized_score(env_name: str, returns, ref_min: float | None = None,
                     ref_max: float | None = None) -> tuple[np.ndarray, str]:
    """100 * (return - min) / (max - min).

    D4RL's reference returns by default; pass a dataset's own (Minari's ref_min_score /
    ref_max_score, made on v5 envs) to score against those instead. Returns the scores and a
    label naming the reference, to be written next to every score.
    """
    fam = env_family(env_name)
    if (ref_min is None) != (ref_max is None):
        raise ValueError("pass both ref_min and ref_max, or neither (D4RL's references)")
    if ref_min is None:
        ref_min, ref_max = fam.d4rl_min, fam.d4rl_max
        label = f"D4RL reference returns ({fam.name}: random {ref_min:g}, expert {ref_max:g})"
    else:
        label = f"dataset reference returns ({fam.name}: min {ref_min:g}, max {ref_max:g})"
    scores = 100.0 * (np.asarray(returns, np.float64) - ref_min) / (ref_max - ref_min)
    return scores, label
