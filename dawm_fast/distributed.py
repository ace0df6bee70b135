"""Data-parallel world-model training under `torchrun`: who this process is, and the collectives
the pipeline needs. Launched without torchrun (no WORLD_SIZE in the environment), everything here
is the one-process no-op.

    torchrun --nproc_per_node 8 -m dawm_fast.train --env walker2d-medium-expert --preset paper
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m dawm_fast.train ...

Rank 0 runs every stage and writes every file; the other ranks join only the world-model stage
(`torch.nn.parallel.DistributedDataParallel`, NCCL on GPUs, gloo on CPUs) and write nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, world size) for a sharded batch; None in one process."""
        return (self.rank, self.size) if self.active else None


def world_from_env() -> World:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: str) -> None:
    """Join the process group (env:// rendezvous, as torchrun sets it up)."""
    if not world.active or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    # The other ranks wait in one broadcast while rank 0 loads the data (first use may generate
    # it) and trains the IDM: give that more than the default 10 (NCCL) / 30 (gloo) minutes.
    dist.init_process_group(backend=backend, timeout=timedelta(hours=2))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(world: World, device: str) -> str:
    """Each rank of a multi-GPU launch uses its own GPU (cuda:LOCAL_RANK)."""
    if world.active and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def broadcast(obj, world: World, src: int = 0):
    """`obj` from rank `src` on every rank (pickled; for small control messages and state)."""
    if not world.active:
        return obj
    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over all ranks (a copy; the input is left alone)."""
    if not world.active:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out)
    return out / world.size


def any_rank(flag: bool, world: World, device) -> bool:
    """True on every rank when `flag` is true on any: ranks agree when to stop."""
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
