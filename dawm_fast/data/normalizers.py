"""Per-dimension normalizers that save and load.

- CDFNormalizer: DWM's choice for states: each dimension through its empirical CDF to [-1, 1]
  (a piecewise-linear map through `n_quantiles` quantiles, so it is monotone and invertible).
- GaussianNormalizer: (x - mean) / std.
- MinMaxNormalizer: DWM's choice for rewards: [min, max] -> [-1, 1].
Each works on numpy arrays and on torch tensors (sampling de-normalizes on the device).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-8


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class Normalizer:
    kind = "base"

    def state_dict(self) -> dict:
        return {"kind": self.kind, **{k: v.copy() for k, v in self.__dict__.items()}}

    @staticmethod
    def from_state_dict(sd: dict) -> "Normalizer":
        cls = {c.kind: c for c in (CDFNormalizer, GaussianNormalizer, MinMaxNormalizer)}[sd["kind"]]
        obj = cls.__new__(cls)
        for k, v in sd.items():
            if k != "kind":
                setattr(obj, k, np.asarray(v))
        return obj

    def save(self, path) -> None:
        np.savez(path, **self.state_dict())

    @staticmethod
    def load(path) -> "Normalizer":
        with np.load(path, allow_pickle=False) as z:
            return Normalizer.from_state_dict({k: (str(z[k]) if k == "kind" else z[k])
                                               for k in z.files})

    def _param(self, name: str, like):
        v = getattr(self, name)
        if _is_torch(like):
            import torch
            return torch.as_tensor(v, dtype=like.dtype, device=like.device)
        return v.astype(like.dtype if like.dtype.kind == "f" else np.float32, copy=False)


class GaussianNormalizer(Normalizer):
    kind = "gaussian"

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), 1e-6)

    def normalize(self, x):
        return (x - self._param("mean", x)) / self._param("std", x)

    def unnormalize(self, y):
        return y * self._param("std", y) + self._param("mean", y)


class MinMaxNormalizer(Normalizer):
    kind = "minmax"

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        self.low = x.min(0)
        high = x.max(0)
        # a constant dimension gets a unit span (it maps to -1) instead of dividing by ~0
        self.high = np.where(high - self.low < 1e-6, self.low + 1.0, high)

    def normalize(self, x):
        lo, hi = self._param("low", x), self._param("high", x)
        return 2 * (x - lo) / (hi - lo) - 1

    def unnormalize(self, y):
        lo, hi = self._param("low", y), self._param("high", y)
        return (y + 1) / 2 * (hi - lo) + lo


class CDFNormalizer(Normalizer):
    kind = "cdf"

    def __init__(self, x: np.ndarray, n_quantiles: int = 1000):
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        q = np.quantile(x, np.linspace(0, 1, n_quantiles), axis=0).T     # [D, Q]
        # Strictly increasing knots keep the map invertible where many samples tie
        # (e.g. a dimension that is constant, or clipped).
        q = np.maximum.accumulate(q + np.arange(n_quantiles)[None, :] * _EPS * 10, axis=1)
        self.knots = q
        self.levels = np.linspace(-1, 1, n_quantiles)

    def normalize(self, x):
        return self._interp(x, self.knots, self.levels)

    def unnormalize(self, y):
        return self._interp(y, self.levels, self.knots)

    def _interp(self, x, xp, fp):
        """Per-dimension piecewise-linear map, clamped at the ends; xp/fp: [D, Q] or [Q]."""
        d = x.shape[-1]
        xp = np.broadcast_to(xp, (d, len(self.levels)))
        fp = np.broadcast_to(fp, (d, len(self.levels)))
        if not _is_torch(x):
            flat = x.reshape(-1, d)
            out = np.stack([np.interp(flat[:, j], xp[j], fp[j]) for j in range(d)], -1)
            return out.reshape(x.shape).astype(x.dtype if x.dtype.kind == "f" else np.float32)
        import torch
        # np.array copies: broadcast views (and loaded arrays) are read-only, which torch warns of
        xp_t = torch.as_tensor(np.array(xp, order="C"), dtype=x.dtype, device=x.device)
        fp_t = torch.as_tensor(np.array(fp, order="C"), dtype=x.dtype, device=x.device)
        flat = x.reshape(-1, d).T.contiguous()                             # [D, N]
        flat = torch.maximum(torch.minimum(flat, xp_t[:, -1:]), xp_t[:, :1])
        i = torch.searchsorted(xp_t, flat).clamp(1, xp_t.shape[1] - 1)
        x0, x1 = xp_t.gather(1, i - 1), xp_t.gather(1, i)
        f0, f1 = fp_t.gather(1, i - 1), fp_t.gather(1, i)
        span = x1 - x0
        # knots that collapse in float32 (a constant dimension) map to their left end
        w = torch.where(span > 0, (flat - x0) / torch.where(span > 0, span, 1), 0)
        return (f0 + w * (f1 - f0)).T.reshape(x.shape)
