"""The vectorized behaviour trainer (dawm_fast.behavior.vector_td3): device replay sampling, a
tiny run end to end on the CPU, resume, and the plain-TD3 actor loss it relies on."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from dawm_fast.behavior.vector_td3 import DeviceReplay, VectorTD3, VectorTD3Config
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.rl.td3bc import td3bc_actor_loss


def test_device_replay_samples_only_added_rows():
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    replay = DeviceReplay(100, 3, 2, 512, torch.device("cpu"), gen)
    rows = np.arange(7 * replay.width, dtype=np.float32).reshape(7, replay.width) + 1
    replay.add(rows[:4])
    replay.add(rows[4:])
    batch = replay.sample()
    got = torch.cat([batch.observations, batch.actions, batch.rewards[:, None],
                     batch.next_observations, batch.terminals[:, None]], 1).numpy()
    first = got[:, 0]
    assert set(first) == set(rows[:, 0])       # every added row, none of the empty ones
    np.testing.assert_array_equal(got, rows[((first - 1) // replay.width).astype(int)])
    with pytest.raises(ValueError, match="full"):
        replay.add(np.zeros((94, replay.width), np.float32))


def test_plain_td3_actor_loss_is_minus_q():
    q, pi, a = torch.randn(8), torch.rand(8, 2), torch.rand(8, 2)
    loss, lmbda = td3bc_actor_loss(pi, q, a, alpha=None)
    assert torch.equal(loss, -q.mean()) and float(lmbda) == 1.0


def _cfg(total: int) -> VectorTD3Config:
    return VectorTD3Config(env="hopper", total_steps=total, start_steps=200, n_envs=2,
                           batch_size=32, hidden=16, snapshot_every=200, eval_episodes=1,
                           device="cpu", async_envs=False, seed=3)


def test_tiny_run_writes_export_layout_and_resumes(tmp_path):
    VectorTD3(_cfg(600), tmp_path).train()
    with open(tmp_path / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [200, 400, 600]
    for step in (200, 400, 600):
        policy = NumpyPolicy.load(tmp_path / "snapshots" / f"actor_{step:07d}.npz")
        assert policy(np.zeros((1, 11))).shape == (1, 3)
    buf = np.load(tmp_path / "buffer.npy")
    assert buf.shape == (600, 2 * 11 + 3 + 2)
    assert buf[:, -1].any()                     # hopper falls: true terminals are recorded
    # a terminal row's next state is the final state, not the next episode's reset state
    term = np.flatnonzero(buf[:, -1] == 1)
    assert not np.allclose(buf[term, 11 + 3 + 1:2 * 11 + 3 + 1], 0.0)
    sd = torch.load(tmp_path / "state.pt", weights_only=False)
    # updates from the vector step that reaches start_steps on, n_envs per vector step
    assert sd["step"] == 600 and sd["agent"]["total_it"] == 600 - 200 + 2

    trainer = VectorTD3(_cfg(800), tmp_path)
    trainer.train()
    assert trainer.step == 800 and trainer.replay.n == 800
    with open(tmp_path / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [200, 400, 600, 800]
