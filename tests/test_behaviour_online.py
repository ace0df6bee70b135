"""The online behaviour trainer (dawm_fast.behavior.online_td3): a run resumes from ``state.pt``
alone (a fresh clone has no ``buffer.npy``) by replaying its own snapshots into the buffer."""
from __future__ import annotations

import numpy as np
import torch

from dawm_fast.behavior.online_td3 import OnlineTD3, OnlineTD3Config

OBS, ACT = 11, 3     # Hopper-v5


def _cfg(total: int, algo: str = "td3") -> OnlineTD3Config:
    return OnlineTD3Config(env="hopper", algo=algo, total_steps=total, start_steps=100,
                           batch_size=16, hidden=16, snapshot_every=100, checkpoint_every=100,
                           eval_episodes=1, seed=5, threads=1)


def test_resume_without_buffer_replays_snapshots(tmp_path):
    OnlineTD3(_cfg(300, "sac"), tmp_path).train()
    assert len(np.load(tmp_path / "buffer.npy")) == 300
    (tmp_path / "buffer.npy").unlink()

    run = OnlineTD3(_cfg(400, "sac"), tmp_path)
    assert run.try_resume()
    assert run.step == 300 and run.size == 300 and run.refill_until == 0   # updates go on at once
    buf = run.buffer[:300]
    o, d = OBS, ACT
    obs, act, nxt, term = buf[:, :o], buf[:, o:o + d], buf[:, o + d + 1:2 * o + d + 1], buf[:, -1]
    assert np.all(np.abs(act) <= 1) and np.isfinite(buf).all()
    # rows chain within an episode: a non-final row's next state is the next row's state
    chained = np.isclose(nxt[:-1], obs[1:]).all(axis=1)
    assert chained.mean() > 0.8
    assert set(np.unique(term)) <= {0.0, 1.0}
    # the first start_steps rows are uniform random actions, the later ones the snapshots'
    # (deterministic + noise 0.1): the two halves differ in spread
    assert act[:100].std() > 0.45
    torch.manual_seed(0)
    run.train()
    assert run.step == 400 and run.size == 400


def test_resume_without_buffer_or_snapshots_refills_with_current_policy(tmp_path):
    OnlineTD3(_cfg(200), tmp_path).train()
    (tmp_path / "buffer.npy").unlink()
    for p in (tmp_path / "snapshots").glob("*.npz"):
        p.unlink()
    run = OnlineTD3(_cfg(300), tmp_path)
    assert run.try_resume()
    assert run.size == 0 and run.refill_until == 200 + 100
