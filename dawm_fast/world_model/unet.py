"""Temporal U-Net noise predictor (Decision Diffuser layout): (x_t, t, g, a_t) -> eps.

The network only maps a noisy window and its conditioning to an eps prediction. It knows nothing
about the noise schedule, inpainting or guidance arithmetic; those live in the scheduler and the
sampling loop. The block structure is explicit on purpose: a fused block (``fused_unet``) replaces
exactly one ``Conv1dBlock`` (conv + bias + GroupNorm + Mish), optionally followed by the
embedding add and the residual add of a ``ResidualTemporalBlock``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TemporalUNetConfig:
    dim: int = 128                       # base width; level l has dim * dim_mults[l] channels
    dim_mults: tuple[int, ...] = (1, 4, 8)   # width multipliers; len-1 = number of 2x downsamplings
    kernel_size: int = 5                 # temporal conv kernel (odd, "same" padding)
    n_groups: int = 8                    # GroupNorm groups; every level width must divide by it
    embed_hidden_mult: int = 4           # hidden width of the time/return/action MLPs = mult * dim


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sin/cos embedding of the integer diffusion step t."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                          * (-math.log(10000.0) / (half - 1)))         # [half]
        args = t.float()[:, None] * freqs[None, :]                       # [B, half]
        return torch.cat([args.sin(), args.cos()], dim=-1)               # [B, dim]


class Conv1dBlock(nn.Module):
    """Conv1d (with bias) -> GroupNorm -> Mish: the unit a fused kernel replaces."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_ch)
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: [B, in_ch, T] -> [B, out_ch, T]
        return self.act(self.norm(self.conv(x)))


class ResidualTemporalBlock(nn.Module):
    """out = Block2(Block1(x) + Linear(Mish(emb))) + Residual(x).

    Residual is a 1x1 conv when the channel count changes, identity otherwise.
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.embed_proj = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_ch))
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [B, in_ch, T], emb: [B, embed_dim]
        h = self.block1(x) + self.embed_proj(emb)[:, :, None]            # [B, out_ch, T]
        h = self.block2(h)
        return h + self.residual(x)


class Downsample1d(nn.Module):
    """Halve the horizon with a strided conv (k=3, s=2, p=1)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Double the horizon with a transposed conv (k=4, s=2, p=1)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _cond_mlp(in_dim: int, dim: int, hidden: int) -> nn.Sequential:
    """3-layer MLP for a conditioning input (Decision Diffuser's returns_mlp shape)."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.Mish(),
                         nn.Linear(dim, hidden), nn.Mish(),
                         nn.Linear(hidden, dim))


class TemporalUNet(nn.Module):
    """eps-prediction U-Net over a window x [B, T, C], conditioned on t, g and a_t.

    Embedding = concat(time_emb, return_emb * returns_mask, action_emb) of size 3 * dim. Dropping
    the return (classifier-free guidance) zeroes its embedding, as Decision Diffuser does.
    """

    def __init__(self, transition_dim: int, act_dim: int, horizon: int,
                 cfg: TemporalUNetConfig = TemporalUNetConfig()):
        super().__init__()
        n_down = len(cfg.dim_mults) - 1
        if horizon % (2 ** n_down):
            raise ValueError(f"horizon {horizon} must be divisible by 2**{n_down} "
                             f"for dim_mults={cfg.dim_mults}")
        widths = [cfg.dim * m for m in cfg.dim_mults]
        if any(w % cfg.n_groups for w in widths):
            raise ValueError(f"channel widths {widths} must be divisible by "
                             f"n_groups={cfg.n_groups}")
        self.cfg = cfg
        self.transition_dim = transition_dim
        self.act_dim = act_dim
        self.horizon = horizon

        dim, hidden = cfg.dim, cfg.embed_hidden_mult * cfg.dim
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, hidden), nn.Mish(),
                                      nn.Linear(hidden, dim))
        self.returns_mlp = _cond_mlp(1, dim, hidden)
        self.action_mlp = _cond_mlp(act_dim, dim, hidden)
        embed_dim = 3 * dim

        def block(i: int, o: int) -> ResidualTemporalBlock:
            return ResidualTemporalBlock(i, o, embed_dim, cfg.kernel_size, cfg.n_groups)

        dims = [transition_dim, *widths]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.downs = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(in_out):
            is_last = level == len(in_out) - 1
            self.downs.append(nn.ModuleList([
                block(d_in, d_out), block(d_out, d_out),
                nn.Identity() if is_last else Downsample1d(d_out)]))
        self.mid1 = block(widths[-1], widths[-1])
        self.mid2 = block(widths[-1], widths[-1])
        # Up path mirrors every level except the input one; each up level upsamples once, undoing
        # the n_down downsamplings (the skip of the first level is unused, as in Decision Diffuser).
        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            self.ups.append(nn.ModuleList([
                block(2 * d_out, d_in), block(d_in, d_in), Upsample1d(d_in)]))
        self.final_block = Conv1dBlock(dim, dim, cfg.kernel_size, cfg.n_groups)
        self.final_conv = nn.Conv1d(dim, transition_dim, 1)

    def embed(self, t: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor,
              returns_mask: torch.Tensor | bool | None = None) -> torch.Tensor:
        """Conditioning embedding [B, 3 * dim]; returns_mask 0 drops the return for that row."""
        t_emb = self.time_mlp(t)                                          # [B, dim]
        r_emb = self.returns_mlp(returns.reshape(-1, 1).to(t_emb.dtype))  # [B, dim]
        if returns_mask is not None:
            if isinstance(returns_mask, bool):
                r_emb = r_emb * float(returns_mask)
            else:
                r_emb = r_emb * returns_mask.reshape(-1, 1).to(r_emb.dtype)
        a_emb = self.action_mlp(actions.to(t_emb.dtype))                  # [B, dim]
        return torch.cat([t_emb, r_emb, a_emb], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, returns: torch.Tensor,
                actions: torch.Tensor,
                returns_mask: torch.Tensor | bool | None = None) -> torch.Tensor:
        """x [B, T, C], t [B] long, returns [B], actions [B, act_dim], returns_mask [B] or None
        (None: every row uses its return) -> eps [B, T, C]."""
        emb = self.embed(t, returns, actions, returns_mask)               # [B, 3 * dim]
        h = x.transpose(1, 2)                                             # [B, C, T]
        skips = []
        for res1, res2, down in self.downs:
            h = res2(res1(h, emb), emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for res1, res2, up in self.ups:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, emb), emb))
        h = self.final_conv(self.final_block(h))                         # [B, C, T]
        return h.transpose(1, 2)                                          # [B, T, C]
