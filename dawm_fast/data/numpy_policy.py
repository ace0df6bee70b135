"""A deterministic MLP policy evaluated in numpy.

Embedded datasets are generated from committed behaviour-policy weights; evaluating them in numpy
keeps the data layer free of torch and of the rest of the package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class NumpyPolicy:
    """relu(x W0 + b0) ... -> tanh(. W_last + b_last) * max_action; weights stored as [in, out]."""

    def __init__(self, weights: dict):
        n = sum(1 for k in weights if k.startswith("W"))
        self.layers = [(np.asarray(weights[f"W{i}"], np.float64),
                        np.asarray(weights[f"b{i}"], np.float64)) for i in range(n)]
        self.max_action = float(weights.get("max_action", 1.0))

    @classmethod
    def load(cls, path: str | Path, prefix: str = "") -> "NumpyPolicy":
        with np.load(path) as z:
            return cls({k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)})

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float64)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return (np.tanh(x) * self.max_action).astype(np.float32)
