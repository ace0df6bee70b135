"""World-model trainer: Adam + optional grad clipping + EMA, with exactly resumable state."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dawm_fast.world_model.diffusion import EMA, DiffusionWorldModel, EMAConfig
from dawm_fast.world_model.precision import bf16_autocast


@dataclass(frozen=True)
class WorldModelTrainerConfig:
    # The run's training loop reads these three; the trainer itself does one step per call.
    steps: int = 2_000_000              # optimizer steps of the run (DWM: 2e6 iterations)
    batch_size: int = 64                # windows per step (DWM), the global batch over all ranks
    checkpoint_every: int = 5_000       # steps between resumable checkpoints
    lr: float = 1e-4                    # Adam learning rate
    grad_clip_norm: float | None = None  # max global grad norm; None disables clipping
    ema: EMAConfig = field(default_factory=EMAConfig)   # EMA decay / cadence / warm-up
    # bf16 autocast of the forward and loss (weights, grads and Adam stay fp32). Off by default:
    # on until its loss curve is shown to match fp32 on the GPU it runs on (tests/test_bf16.py).
    bf16: bool = False


class WindowBatcher:
    """Training windows held on the device and the generator that draws each batch from them.

    ``draw()`` = one ``randint`` of B indices from ``generator`` plus three gathers, all on the
    device: no host sync, so the fast trainer captures it inside its step graph.
    """

    def __init__(self, x0: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor,
                 batch_size: int, generator: torch.Generator,
                 shard: tuple[int, int] | None = None):
        if not (len(x0) == len(returns) == len(actions)) or len(x0) == 0:
            raise ValueError(f"need the same non-zero number of windows, returns and actions; got "
                             f"{len(x0)}, {len(returns)}, {len(actions)}")
        if generator.device.type != x0.device.type:
            raise ValueError(f"generator is on {generator.device} but the windows are on "
                             f"{x0.device}")
        rank, world = shard or (0, 1)
        if batch_size % world:
            raise ValueError(f"the batch of {batch_size} windows does not split evenly over "
                             f"{world} processes")
        self.x0, self.returns, self.actions = x0, returns, actions
        self.batch_size = int(batch_size)          # the global batch
        self.generator = generator
        # Data-parallel: every rank draws the global batch's indices (its generator stays in step
        # with the others') and keeps its own slice of them.
        per_rank = self.batch_size // world
        self.mine = slice(rank * per_rank, (rank + 1) * per_rank)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x0), (self.batch_size,), generator=self.generator,
                            device=self.x0.device)[self.mine]                      # [B / world]
        return self.x0[idx], self.returns[idx], self.actions[idx]


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept {"x0", "returns", "actions"}, a (x0, returns, actions) sequence or a
    WindowBatcher (which draws the batch)."""
    if isinstance(batch, WindowBatcher):
        return batch.draw()
    if isinstance(batch, Mapping):
        return batch["x0"], batch["returns"], batch["actions"]
    if isinstance(batch, Sequence) and len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise TypeError("batch must be a mapping with keys x0/returns/actions or a 3-sequence")


class _Loss(torch.nn.Module):
    """The world model's loss as a module's forward, which is what DistributedDataParallel wraps
    (its gradient all-reduce is armed by the forward call)."""

    def __init__(self, model: DiffusionWorldModel):
        super().__init__()
        self.model = model

    def forward(self, x0, returns, actions, generator, shard):
        return self.model.loss(x0, returns, actions, generator=generator, shard=shard)


class WorldModelTrainer:
    """Owns the optimizer, the EMA copy, the step counter and the loss RNG.

    The loss draws all its randomness from ``self.generator`` (on the model's device, seeded by
    ``seed``), whose state is part of ``state_dict``, so save -> load into a fresh trainer ->
    continue reproduces an uninterrupted run bit for bit.

    ``shard = (rank, world)`` trains data-parallel under torch.distributed: the model is wrapped
    in DistributedDataParallel (which makes every rank start from rank 0's weights), each rank
    takes its slice of the global batch, and the gradient is averaged over ranks, so k steps on W
    ranks with B / W windows each equal k one-process steps with B. The generator stays in step on
    every rank, so a checkpoint resumes at any world size.
    """

    path_description = "reference (eager PyTorch)"

    def __init__(self, model: DiffusionWorldModel,
                 cfg: WorldModelTrainerConfig = WorldModelTrainerConfig(),
                 shard: tuple[int, int] | None = None, *, seed: int = 0):
        self.cfg = cfg
        self.model = model
        self.device = next(model.parameters()).device
        self.shard = shard
        self.loss_fn = _Loss(model)
        if shard is not None:
            from torch.nn.parallel import DistributedDataParallel
            self.loss_fn = DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.ema = EMA(model, cfg.ema)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.step = 0                    # optimizer steps taken

    def train_step(self, batch) -> dict[str, float]:
        """One Adam step on batch = (x0 [B, T, C], returns [B], actions [B, act_dim]) or a
        WindowBatcher to draw it from."""
        x0, returns, actions = (v.to(self.device) for v in _unpack(batch))
        self.model.train()
        with bf16_autocast(self.device, self.cfg.bf16):
            loss = self.loss_fn(x0, returns, actions, self.generator, self.shard)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out = {"loss": float(loss.detach())}
        if self.cfg.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
            out["grad_norm"] = float(norm)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return out

    def state_dict(self) -> dict:
        """A deep-copied snapshot: later training does not alter a saved checkpoint."""
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
        })

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)     # the optimizer would otherwise alias the caller's tensors
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
