"""Diffusion world model: window layout, inpainting, DDPM training loss, and an EMA helper.

Window layout x [B, T, C], C = obs_dim + act_dim + 1; step i holds [s_i, a_i, r_i]. Step 0 is
the known (s_t, a_t) and is inpainted; future actions (i >= 1) are not modelled (kept at 0, not
in the loss); the IDM recovers them later. Loss channels: r_0 and (s_i, r_i) for i >= 1.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from dawm_fast.world_model.precision import bf16_autocast
from dawm_fast.world_model.scheduler import DDIMScheduler, DiffusionScheduleConfig
from dawm_fast.world_model.unet import TemporalUNet, TemporalUNetConfig


@dataclass(frozen=True)
class WorldModelConfig:
    horizon: int = 8                    # T, window length including the conditioning step 0
    cond_dropout: float = 0.25          # P(return dropped) per training sample (CFG, DWM value)
    unet: TemporalUNetConfig = field(default_factory=TemporalUNetConfig)           # noise net
    schedule: DiffusionScheduleConfig = field(default_factory=DiffusionScheduleConfig)  # K etc.


def build_loss_mask(horizon: int, obs_dim: int, act_dim: int) -> torch.Tensor:
    """[T, C] float mask: 1 on r_0 and on (s_i, r_i) for i >= 1, 0 elsewhere."""
    c = obs_dim + act_dim + 1
    mask = torch.zeros(horizon, c)
    mask[0, c - 1] = 1.0                 # r_0 is unknown at generation time
    mask[1:, :obs_dim] = 1.0             # future states
    mask[1:, c - 1] = 1.0                # future rewards
    return mask


class DiffusionWorldModel(nn.Module):
    """Holds the noise network, the noise schedule and the window layout."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: WorldModelConfig = WorldModelConfig()):
        super().__init__()
        if not 0.0 <= cfg.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cfg.cond_dropout}")
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.horizon = cfg.horizon
        self.transition_dim = obs_dim + act_dim + 1
        self.unet = TemporalUNet(self.transition_dim, act_dim, cfg.horizon, cfg.unet)
        # The training scheduler: only add_noise and alphas are used here; sampling builds its own
        # (set_timesteps mutates state and must not leak between callers).
        self.scheduler = DDIMScheduler(cfg.schedule)
        # Derived from the dims, so kept out of checkpoints.
        self.register_buffer("loss_mask", build_loss_mask(cfg.horizon, obs_dim, act_dim),
                             persistent=False)                              # [T, C]
        # sqrt(alpha_t), sqrt(1 - alpha_t) per level for eps_from_output; buffers, so they follow
        # the model to its device and a CUDA graph can gather them by t.
        alphas = self.scheduler.alphas_cumprod
        self.register_buffer("sqrt_alphas", alphas.sqrt().float(), persistent=False)     # [K]
        self.register_buffer("sqrt_one_minus_alphas", (1 - alphas).sqrt().float(),
                             persistent=False)                                          # [K]

    @property
    def schedule_config(self) -> DiffusionScheduleConfig:
        return self.cfg.schedule

    @property
    def predicts_sample(self) -> bool:
        return self.cfg.schedule.prediction_type == "sample"

    def eps_from_output(self, out: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """The network's output [B, T, C] at x_t [B, T, C], levels t [B], as predicted noise.

        "epsilon": the output itself. "sample": the output is x0, so eps = (x_t - sqrt(a_t) x0) /
        sqrt(1 - a_t), DDIM eq. (9) solved for eps; the scheduler then recovers exactly this x0,
        and every sampler (and its fused DDIM kernel) stays eps-based. Why "sample" exists: with
        K = 5 the noisiest level has sqrt(a_t) ~ 0.01, so an eps-net's x0 there is its eps error
        times ~100; an x0-net predicts that level's x0 directly (benchmarks/RESULTS.md).
        """
        if not self.predicts_sample:
            return out
        sa = self.sqrt_alphas[t].view(-1, 1, 1)
        s1a = self.sqrt_one_minus_alphas[t].view(-1, 1, 1)
        return (x_t - sa * out) / s1a

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, returns: torch.Tensor,
                    actions: torch.Tensor, returns_mask: torch.Tensor | None = None, *,
                    forward=None, bf16: bool = False) -> torch.Tensor:
        """fp32 eps [B, T, C] for sampling: ``forward`` (default ``self.unet``; same signature),
        under bf16 autocast when asked, then ``eps_from_output`` in fp32."""
        with bf16_autocast(x_t.device, bf16):
            out = (forward or self.unet)(x_t, t, returns, actions, returns_mask)
        return self.eps_from_output(out.float(), x_t, t)

    def conditioning(self, x: torch.Tensor, s0: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
        """Return x with s_t, a_t written into step 0 and future action channels zeroed.

        x [B, T, C], s0 [B, obs_dim], a0 [B, act_dim]. Out of place, so it is autograd-safe.
        """
        o, a = self.obs_dim, self.act_dim
        x = x.clone()
        x[:, 0, :o] = s0
        x[:, 0, o:o + a] = a0
        x[:, 1:, o:o + a] = 0.0
        return x

    def loss(self, x0: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor,
             generator: torch.Generator | None = None, forward=None,
             shard: tuple[int, int] | None = None) -> torch.Tensor:
        """DDPM loss, masked to the modelled channels: the network's output against the added
        noise ("epsilon") or against x0 itself ("sample").

        x0 [B, T, C] normalized windows, returns [B] normalized g, actions [B, act_dim] = a_t.
        Random draws, in order, all from ``generator``: t [B], noise [B, T, C], then the
        return-keep mask [B]. ``forward(x_t, t, returns, actions, keep)`` is the network; default
        ``self.unet`` (whose blocks the fast trainer has swapped for fused ones: same function).
        ``shard = (rank, world)``: x0 is rank's slice of a global batch of world * B windows; the
        draws are made for the global batch and sliced the same way, so every rank's generator
        stays in step and data-parallel training sees the samples one process would.
        """
        b = x0.shape[0]
        dev = x0.device
        rank, world = shard or (0, 1)
        mine = slice(rank * b, (rank + 1) * b)
        t = torch.randint(0, self.scheduler.n_diffusion_steps, (world * b,), device=dev,
                          generator=generator)[mine]                          # [B]
        noise = torch.randn((world * b,) + tuple(x0.shape[1:]), device=dev, dtype=x0.dtype,
                            generator=generator)[mine]                        # [B, T, C]
        keep = torch.bernoulli(torch.full((world * b,), 1.0 - self.cfg.cond_dropout, device=dev,
                                          dtype=x0.dtype), generator=generator)[mine]  # [B]
        x_t = self.scheduler.add_noise(x0, noise, t)
        x_t = self.conditioning(x_t, x0[:, 0, :self.obs_dim], actions)
        # The loss is reduced in fp32 even when the forward ran under bf16 autocast.
        out = (forward or self.unet)(x_t, t, returns, actions, keep).float()  # [B, T, C]
        mask = self.loss_mask.to(out.dtype)
        target = x0 if self.predicts_sample else noise
        sq = (out - target) ** 2 * mask
        return sq.sum() / (mask.sum() * b)


@dataclass(frozen=True)
class EMAConfig:
    decay: float = 0.995                # ema <- decay * ema + (1 - decay) * online
    update_every: int = 10              # only steps divisible by this touch the EMA
    start_step: int = 1000              # before this step an update copies the online weights


class EMA:
    """Exponential moving average copy of a model (Diffuser trainer semantics)."""

    def __init__(self, model: nn.Module, cfg: EMAConfig = EMAConfig()):
        self.cfg = cfg
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based)."""
        if step % self.cfg.update_every:
            return
        # foreach: one launch per op for all tensors (the same arithmetic as per-tensor lerp_/copy_;
        # on a GPU ~150 launches fewer per update).
        params, ema_params = list(model.parameters()), list(self.model.parameters())
        if step < self.cfg.start_step:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.cfg.decay)
        buffers = list(model.buffers())
        if buffers:
            torch._foreach_copy_(list(self.model.buffers()), buffers)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
