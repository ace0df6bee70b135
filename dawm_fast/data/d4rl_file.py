"""Reading a D4RL-layout .hdf5 file (the files d4rl downloads to ~/.d4rl/datasets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DatasetError, OfflineDataset

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")


def read_d4rl_hdf5(path: str | Path, name: str, eval_env_id: str, obs_dim: int,
                   act_dim: int) -> OfflineDataset:
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"D4RL file {path} does not exist; pass the path of a D4RL .hdf5 file "
                           f"with --data-path / path=")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"D4RL file {path} cannot be opened as HDF5 (truncated or not an "
                           f"HDF5 file: {e}); download it again")
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DatasetError(f"D4RL file {path} lacks {', '.join(missing)}; a D4RL file holds "
                               f"observations, actions, rewards, terminals (and timeouts)")
        try:
            data = {k: f[k][()] for k in REQUIRED_KEYS}
            timeouts = f["timeouts"][()] if "timeouts" in f else None
            nxt = f["next_observations"][()] if "next_observations" in f else None
        except OSError as e:
            raise DatasetError(f"D4RL file {path} is truncated or corrupt ({e}); download it again")
    # Every key: numbers, one row per observation (checked before any of them is used).
    n = len(data["observations"]) if np.ndim(data["observations"]) else 0
    if n == 0:
        raise DatasetError(f"D4RL file {path}: 'observations' holds no rows; download it again")
    keyed = {**data, "timeouts": timeouts, "next_observations": nxt}
    for k, v in keyed.items():
        if v is None:
            continue
        v = np.asarray(v)
        if v.dtype.kind not in "fiub":
            raise DatasetError(f"D4RL file {path}: '{k}' holds {v.dtype} values, not numbers; "
                               f"the file is not a D4RL dataset")
        if v.ndim == 0 or len(v) != n:
            raise DatasetError(f"D4RL file {path}: '{k}' has {len(v) if v.ndim else 0} rows, "
                               f"'observations' {n}; the file is inconsistent, download it again")
        if k not in ("observations", "actions", "next_observations") and v.ndim != 1 and \
                v.size != n:
            raise DatasetError(f"D4RL file {path}: '{k}' has shape {v.shape}, expected [{n}]")
    obs = np.asarray(data["observations"], np.float32)
    act = np.asarray(data["actions"], np.float32)
    n = len(obs)
    if obs.ndim != 2 or obs.shape[1] != obs_dim:
        raise DatasetError(f"D4RL file {path}: observations have shape {obs.shape}, expected "
                           f"[N, {obs_dim}] for {name}; is it the file of another env?")
    if act.ndim != 2 or act.shape[1] != act_dim:
        raise DatasetError(f"D4RL file {path}: actions have shape {act.shape}, expected "
                           f"[N, {act_dim}] for {name}")
    rew = np.asarray(data["rewards"], np.float32).reshape(n)
    term = np.asarray(data["terminals"], bool).reshape(n)
    tout = np.zeros(n, bool) if timeouts is None else np.asarray(timeouts, bool).reshape(n)
    if nxt is None:
        # As d4rl.qlearning_dataset: the next observation is the following row; the last step of
        # a timed-out episode has none and is dropped.
        nxt = np.concatenate([obs[1:], obs[-1:]])
        keep = ~tout
        keep[-1] = bool(term[-1])
        # the step before each dropped one now ends its episode
        prev = np.flatnonzero(~keep) - 1
        tout = tout.copy()
        tout[prev[prev >= 0]] = True
        obs, act, rew, nxt, term, tout = (x[keep] for x in (obs, act, rew, nxt, term, tout))
    else:
        nxt = np.asarray(nxt, np.float32)
        if nxt.shape != obs.shape:
            raise DatasetError(f"D4RL file {path}: next_observations shape {nxt.shape} differs "
                               f"from observations {obs.shape}")
    return OfflineDataset(name, obs, act, rew, nxt, term, tout, f"d4rl file {path}", eval_env_id)
