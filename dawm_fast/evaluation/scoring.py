"""A policy's evaluation as results report it: returns and D4RL-normalized scores."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dawm_fast.data import OfflineDataset
from dawm_fast.data.scores import normalized_score
from dawm_fast.evaluation.rollout import evaluate_policy


def score_policy(act: Callable[[np.ndarray], np.ndarray], ds: OfflineDataset, family: str,
                 episodes: int, seed: int) -> dict:
    """`episodes` seeded episodes of `act` in the dataset's evaluation env: mean and std of the
    returns and of the D4RL-normalized score (its reference named), every return, and the score
    against the dataset's own reference returns when it has them."""
    res = evaluate_policy(act, ds.eval_env_id, episodes, seed)
    scores, label = normalized_score(family, res.returns)
    out = {"return_mean": float(res.returns.mean()), "return_std": float(res.returns.std()),
           "score_mean": float(scores.mean()), "score_std": float(scores.std()),
           "reference": label, "returns": res.returns.tolist()}
    if ds.ref_min_score is not None and ds.ref_max_score is not None:
        own, own_label = normalized_score(family, res.returns, ds.ref_min_score, ds.ref_max_score)
        out.update(dataset_score_mean=float(own.mean()), dataset_score_std=float(own.std()),
                   dataset_reference=own_label)
    return out
