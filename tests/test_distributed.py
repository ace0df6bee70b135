"""Data-parallel world-model training with two gloo processes on the CPU: W ranks with B / W
windows each take the same steps as one process with B, and checkpoints cross world sizes."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dawm_fast.world_model import (DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig,
                                   WorldModelTrainer, WorldModelTrainerConfig)
from dawm_fast.world_model.diffusion import EMAConfig
from dawm_fast.world_model.training import WindowBatcher

OBS, ACT, T, N_WINDOWS, BATCH = 5, 2, 8, 64, 8


def windows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N_WINDOWS, T, OBS + ACT + 1, generator=g), torch.rand(N_WINDOWS, generator=g),
            torch.rand(N_WINDOWS, ACT, generator=g) * 2 - 1)


def trainer_and_batcher(shard=None):
    torch.manual_seed(0)
    model = DiffusionWorldModel(OBS, ACT, WorldModelConfig(horizon=T, unet=TemporalUNetConfig(
        dim=8, dim_mults=(1, 2))))
    trainer = WorldModelTrainer(model, WorldModelTrainerConfig(lr=1e-3, ema=EMAConfig(
        start_step=1, update_every=1)), shard=shard, seed=2)
    batcher = WindowBatcher(*windows(), BATCH, torch.Generator().manual_seed(3), shard=shard)
    return trainer, batcher


def single(steps, start_state=None):
    trainer, batcher = trainer_and_batcher()
    if start_state is not None:
        trainer.load_state_dict(start_state["trainer"])
        batcher.generator.set_state(start_state["batch_generator"])
    for _ in range(steps):
        trainer.train_step(batcher)
    return {"trainer": trainer.state_dict(), "batch_generator": batcher.generator.get_state()}


def _ddp_worker(rank, world, rdzv, steps, start, result):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        trainer, batcher = trainer_and_batcher(shard=(rank, world))
        if start is not None:
            state = torch.load(start, weights_only=False)
            trainer.load_state_dict(state["trainer"])
            batcher.generator.set_state(state["batch_generator"])
        for _ in range(steps):
            trainer.train_step(batcher)
        if rank == 0:
            torch.save({"trainer": trainer.state_dict(),
                        "batch_generator": batcher.generator.get_state()}, result)
    finally:
        dist.destroy_process_group()


def ddp(tmp_path, steps, start_state=None, world=2):
    start = None
    if start_state is not None:
        start = tmp_path / "start.pt"
        torch.save(start_state, start)
    result = tmp_path / "ddp.pt"
    rdzv = tmp_path / f"rdzv{os.urandom(4).hex()}"
    mp.spawn(_ddp_worker, args=(world, str(rdzv), steps, str(start) if start else None,
                                str(result)), nprocs=world)
    return torch.load(result, weights_only=False)


def inert_parameters() -> set[str]:
    """Parameters whose gradient is float noise: the conv biases right before a GroupNorm (which
    removes them). Adam scales any gradient to a step of about lr, so summing a batch in two
    halves moves these by up to lr per step, at random; they do not change the function."""
    trainer, batcher = trainer_and_batcher()
    trainer.model.loss(*batcher.draw(), generator=trainer.generator).backward()
    grads = {k: p.grad.abs().max().item() for k, p in trainer.model.named_parameters()}
    top = max(grads.values())
    return {k for k, g in grads.items() if g < 1e-6 * top}


def assert_same_training(a, b):
    inert = inert_parameters()
    assert all(k.endswith("conv.bias") for k in inert)
    steps = a["trainer"]["step"]
    for part in (a["trainer"]["model"], a["trainer"]["ema"]["model"]):
        other = b["trainer"]["model"] if part is a["trainer"]["model"] else \
            b["trainer"]["ema"]["model"]
        for k, v in part.items():
            if k.split("unet.", 1)[-1] in {n.split("unet.", 1)[-1] for n in inert}:
                assert (v - other[k]).abs().max() <= 1e-3 * steps * 1.01, k   # lr per step
            else:
                torch.testing.assert_close(v, other[k], rtol=1e-4, atol=2e-5, msg=k)
    assert a["trainer"]["step"] == b["trainer"]["step"]
    assert torch.equal(a["trainer"]["generator"], b["trainer"]["generator"])
    assert torch.equal(a["batch_generator"], b["batch_generator"])


def test_two_ranks_take_the_one_process_steps(tmp_path):
    one = single(3)
    two = ddp(tmp_path, 3)
    assert_same_training(two, one)
    # and they moved: not a comparison of two untouched models
    fresh = single(0)
    moved = [not torch.equal(v, fresh["trainer"]["model"][k])
             for k, v in two["trainer"]["model"].items() if v.is_floating_point()]
    assert sum(moved) > len(moved) // 2


def test_checkpoints_resume_across_world_sizes(tmp_path):
    reference = single(4)
    # two ranks, then one process
    assert_same_training(single(2, ddp(tmp_path, 2)), reference)
    # one process, then two ranks
    assert_same_training(ddp(tmp_path, 2, single(2)), reference)


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        WindowBatcher(*windows(), 8, torch.Generator(), shard=(0, 3))


TINY_RUN = [f"--set={kv}" for kv in (
    "rl_steps=20", "eval_every=20", "wm_training.steps=30", "wm_training.checkpoint_every=10",
    "idm.n_steps=20", "n_synthetic_starts=64", "eval_episodes=1", "final_eval_episodes=1")]


def test_torchrun_pipeline_matches_one_process(tmp_path, monkeypatch):
    """`torchrun --nproc_per_node 2 -m dawm_fast.train` (gloo) trains the world model that one
    process trains; rank 0 alone writes the run directory."""
    import json
    import subprocess
    import sys

    from dawm_fast import train
    from dawm_fast.data import embedded
    from dawm_fast.data.tasks import env_family

    with embedded.random_policy_store(tmp_path / "store", env_family("walker2d")):
        args = ["--env", "walker2d-medium-expert", "--preset", "smoke", "--device", "cpu",
                "--threads", "1", *TINY_RUN]
        assert train.main(args + ["--out", str(tmp_path / "one")]) == 0
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                               "2", "-m", "dawm_fast.train", *args, "--out",
                               str(tmp_path / "two")], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "DistributedDataParallel over 2 processes, 32 windows each" in proc.stdout
    assert proc.stdout.count("[idm] training") == 1        # the other rank ran no stage
    one, two = (torch.load(tmp_path / d / "world_model.pt", weights_only=False)["ema_model"]
                for d in ("one", "two"))
    inert = {k.split("unet.", 1)[-1] for k in inert_parameters()}
    for k, v in one.items():
        if k.split("unet.", 1)[-1] in inert:
            assert (v - two[k]).abs().max() <= 1e-4 * 30 * 1.01, k     # wm_lr per step
        else:
            torch.testing.assert_close(two[k], v, rtol=1e-3, atol=1e-4, msg=k)
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["synthetic_transitions"] > 0 and "final_score_mean" in res
