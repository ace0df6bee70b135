"""The one bf16 autocast region used by training steps and sampling forwards."""
from __future__ import annotations

import torch


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` (a no-op when not ``enabled``). The weight-cast cache is off:
    a CUDA graph replays the casts, and a cache would hold tensors across replays."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)
