"""Cosine noise schedule and a DDIM sampler step (diffusers-style scheduler object).

Notation follows the DDIM paper (Song et al., 2021), where alpha_t denotes the *cumulative*
product (DDPM's alpha-bar); equation numbers below refer to that paper. Training timesteps are
t in [0, K): t = 0 is the least noisy level, t = K - 1 the noisiest.

The scheduler never sees the network: the sampling loop asks the model for eps and hands it to
``step``. ``step_coefficients`` exposes the exact float constants ``step`` uses so a fused kernel
can apply the same update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


PREDICTION_TYPES = ("epsilon", "sample")


@dataclass(frozen=True)
class DiffusionScheduleConfig:
    n_diffusion_steps: int = 5          # K, training noise levels (DWM uses 5)
    schedule: str = "cosine"            # only the Nichol & Dhariwal cosine schedule is provided
    cosine_s: float = 0.008             # cosine schedule offset s (keeps beta_0 away from 0)
    max_beta: float = 0.999             # betas are clipped here; the cosine's last beta would be 1
    # What the network outputs: "epsilon" (the added noise; DWM) or "sample" (x0 itself). The
    # samplers always receive eps; DiffusionWorldModel.eps_from_output converts a "sample" output.
    prediction_type: str = "epsilon"
    clip_sample: bool = True            # clip the predicted x0 (data is normalized to [-1, 1])
    clip_range: float = 1.0             # x0 is clipped to [-clip_range, clip_range]


def cosine_alphas_cumprod(k: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_t (cumulative) for t = 0..K-1 from the cosine schedule, float64 [K].

    f(u) = cos(((u / K) + s) / (1 + s) * pi / 2)^2 for u = 0..K; beta_t = 1 - f(t+1) / f(t),
    clipped to max_beta; alpha_t = prod_{j<=t} (1 - beta_j).
    """
    u = torch.arange(k + 1, dtype=torch.float64)
    f = torch.cos((u / k + s) / (1 + s) * math.pi * 0.5) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(0.0, max_beta)
    return torch.cumprod(1 - betas, dim=0)


def ddim_timesteps(n_sampling_steps: int, n_diffusion_steps: int) -> list[int]:
    """Descending, evenly spaced subsequence of [0, K) that always holds K-1 and 0.

    Rounds half up (floor(x + 0.5)) so that steps at least one apart never collide; N = K gives
    every step. Example: N=3, K=5 -> [4, 2, 0].
    """
    n, k = n_sampling_steps, n_diffusion_steps
    if not 1 <= n <= k:
        raise ValueError(f"n_sampling_steps must be in [1, {k}], got {n}")
    if n == 1:
        return [k - 1]
    return [int(math.floor((k - 1) * (n - 1 - i) / (n - 1) + 0.5)) for i in range(n)]


@dataclass(frozen=True)
class StepCoefficients:
    """Plain floats for one DDIM update x_t -> x_prev (all computed in float64)."""
    t: int                          # current timestep
    t_prev: int                     # next timestep in the list, -1 after the last (alpha_prev = 1)
    sqrt_recip_alpha: float         # 1 / sqrt(alpha_t)
    sqrt_recipm1_alpha: float       # sqrt(1 - alpha_t) / sqrt(alpha_t)
    sqrt_alpha: float               # sqrt(alpha_t)
    recip_sqrt_one_minus_alpha: float   # 1 / sqrt(1 - alpha_t)
    sqrt_alpha_prev: float          # sqrt(alpha_prev)
    dir_coef: float                 # sqrt(1 - alpha_prev - sigma^2): weight of the eps direction
    sigma: float                    # noise scale of eq. (16); 0 for eta = 0 and at the last step
    clip: float | None              # x0 clip bound, None when clipping is off


@dataclass
class SchedulerStepOutput:
    prev_sample: torch.Tensor            # x at the next timestep of the list    [B, T, C]
    pred_original_sample: torch.Tensor   # clipped x0 prediction                 [B, T, C]


class DDIMScheduler:
    """Cosine-schedule DDIM: ``add_noise`` for training, ``set_timesteps`` + ``step`` to sample."""

    def __init__(self, cfg: DiffusionScheduleConfig = DiffusionScheduleConfig(), eta: float = 0.0):
        if cfg.schedule != "cosine":
            raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: 'cosine'")
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {cfg.prediction_type!r}; valid: "
                             f"{', '.join(map(repr, PREDICTION_TYPES))}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.config = cfg
        self.eta = eta
        self.alphas_cumprod = cosine_alphas_cumprod(cfg.n_diffusion_steps, cfg.cosine_s,
                                                    cfg.max_beta)          # float64 [K]
        self.timesteps: list[int] = []
        self._alphas_cumprod_by_device: dict[str, torch.Tensor] = {}

    @property
    def n_diffusion_steps(self) -> int:
        return self.config.n_diffusion_steps

    # ---- training -------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0), eq. (4): x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) noise. t: [B] long."""
        a = self._alphas_cumprod_on(x0.device)[t]                        # [B] float64
        shape = (-1,) + (1,) * (x0.dim() - 1)
        sqrt_a = a.sqrt().to(x0.dtype).reshape(shape)
        sqrt_1ma = (1 - a).sqrt().to(x0.dtype).reshape(shape)
        return sqrt_a * x0 + sqrt_1ma * noise

    def _alphas_cumprod_on(self, device: torch.device) -> torch.Tensor:
        """alphas_cumprod on ``device``, copied once: a host-to-device copy per training step would
        cost a sync and cannot be captured in a CUDA graph."""
        cache = self._alphas_cumprod_by_device
        key = str(device)
        if key not in cache:
            cache[key] = self.alphas_cumprod.to(device)
        return cache[key]

    # ---- sampling -------------------------------------------------------------------------
    def set_timesteps(self, n_sampling_steps: int) -> list[int]:
        """Build and store the descending DDIM timestep list; returns it."""
        self.timesteps = ddim_timesteps(n_sampling_steps, self.n_diffusion_steps)
        return self.timesteps

    def step_coefficients(self, step_index: int) -> StepCoefficients:
        if not self.timesteps:
            raise RuntimeError("call set_timesteps() before step()")
        if not 0 <= step_index < len(self.timesteps):
            raise IndexError(f"step_index {step_index} outside [0, {len(self.timesteps)})")
        t = self.timesteps[step_index]
        # The previous timestep comes from the stored list, so uneven strides stay exact.
        t_prev = self.timesteps[step_index + 1] if step_index + 1 < len(self.timesteps) else -1
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        # eq. (16): sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        sigma = self.eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        return StepCoefficients(
            t=t, t_prev=t_prev,
            sqrt_recip_alpha=1.0 / math.sqrt(a_t),
            sqrt_recipm1_alpha=math.sqrt(1 - a_t) / math.sqrt(a_t),
            sqrt_alpha=math.sqrt(a_t),
            recip_sqrt_one_minus_alpha=1.0 / math.sqrt(1 - a_t),
            sqrt_alpha_prev=math.sqrt(a_prev),
            dir_coef=math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)),
            sigma=sigma,
            clip=self.config.clip_range if self.config.clip_sample else None)

    def step(self, eps: torch.Tensor, step_index: int, x: torch.Tensor,
             noise: torch.Tensor | None = None) -> SchedulerStepOutput:
        """One DDIM update from timesteps[step_index] to the next listed timestep.

        ``noise`` (same shape as x) is required when eta > 0; the caller draws it (and applies any
        temperature) so every backend consumes identical random numbers. It is ignored for eta = 0.
        """
        c = self.step_coefficients(step_index)
        # eq. (9): predicted x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
        x0 = c.sqrt_recip_alpha * x - c.sqrt_recipm1_alpha * eps
        if c.clip is not None:
            x0 = x0.clamp(-c.clip, c.clip)
            # Re-derive eps from the clipped x0 so that x_prev stays on the x0 / x_t line.
            eps = (x - c.sqrt_alpha * x0) * c.recip_sqrt_one_minus_alpha
        # eq. (12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma * noise
        prev = c.sqrt_alpha_prev * x0 + c.dir_coef * eps
        if self.eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs a noise tensor drawn by the caller")
            prev = prev + c.sigma * noise
        return SchedulerStepOutput(prev_sample=prev, pred_original_sample=x0)
