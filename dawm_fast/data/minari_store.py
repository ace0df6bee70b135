"""Reading and writing datasets in the local Minari store through Minari's own API."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .dataset import DatasetError, OfflineDataset, from_episodes


def store_root() -> Path:
    """Minari's local store: MINARI_DATASETS_PATH or ~/.minari/datasets (Minari's rule)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def dataset_dir(dataset_id: str) -> Path:
    return store_root() / dataset_id


def is_local(dataset_id: str) -> bool:
    """Minari 0.5 keeps a dataset's metadata (and episodes) under ``<store>/<id>/data/``."""
    return (dataset_dir(dataset_id) / "data" / "metadata.json").exists()


@contextlib.contextmanager
def writing_lock(dataset_id: str):
    """Hold an exclusive lock for making `dataset_id` in this store (blocking): the runs of a
    sweep that start together all want the same embedded dataset on first use, and one of them
    makes it while the others wait and then read it. The kernel drops the lock when its process
    ends in any way, so a killed generation leaves no stale lock."""
    locks = store_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (dataset_id.replace("/", "__") + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_minari(dataset_id: str, name: str, source: str, download: bool = False) -> OfflineDataset:
    """Load one Minari dataset and flatten its episodes."""
    import minari

    try:
        ds = minari.load_dataset(dataset_id, download=download)
    except FileNotFoundError as e:
        raise DatasetError(f"Minari dataset {dataset_id} is not in the local store "
                           f"({store_root()}); download it with `minari download {dataset_id}` "
                           f"or use source='embedded'") from e
    except Exception as e:  # Minari raises several types for broken files
        raise DatasetError(f"Minari dataset {dataset_id} at {dataset_dir(dataset_id)} could not be "
                           f"read ({type(e).__name__}: {e}); delete that folder and load again")
    episodes = []
    try:
        for ep in ds.iterate_episodes():
            episodes.append({"observations": ep.observations, "actions": ep.actions,
                             "rewards": ep.rewards, "terminations": ep.terminations,
                             "truncations": ep.truncations})
    except Exception as e:
        raise DatasetError(f"Minari dataset {dataset_id} at {dataset_dir(dataset_id)} is "
                           f"truncated or corrupt ({type(e).__name__}: {e}); delete that folder "
                           f"and load again")
    meta = ds.storage.metadata
    eval_spec = meta.get("eval_env_spec")
    eval_id = None
    if eval_spec:
        import json
        eval_id = json.loads(eval_spec).get("id") if isinstance(eval_spec, str) else None
    eval_id = eval_id or (ds.spec.env_spec.id if ds.spec.env_spec is not None else None)
    return from_episodes(name, episodes, source, eval_id,
                         ref_min_score=meta.get("ref_min_score"),
                         ref_max_score=meta.get("ref_max_score"),
                         info={"minari_id": dataset_id})


def write_minari(dataset_id: str, episodes: list[dict], env_id: str, *, ref_min_score: float,
                 ref_max_score: float, description: str, algorithm_name: str) -> None:
    """Write whole episodes as a Minari dataset, atomically.

    The dataset is built under a temporary store next to the real one and then moved into
    place, so an interrupted generation never leaves a half-written dataset behind and an existing
    dataset is never overwritten.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    final = dataset_dir(dataset_id)
    if final.exists():
        raise DatasetError(f"{final} already exists; not overwriting it")
    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".dawm_tmp_", dir=root))
    try:
        buffers = [EpisodeBuffer(id=i, observations=np.asarray(ep["observations"], np.float32),
                                 actions=np.asarray(ep["actions"], np.float32),
                                 rewards=np.asarray(ep["rewards"], np.float64),
                                 terminations=np.asarray(ep["terminations"], bool),
                                 truncations=np.asarray(ep["truncations"], bool))
                   for i, ep in enumerate(episodes)]
        with _minari_store_at(tmp_root), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env_id, eval_env=env_id,
                algorithm_name=algorithm_name, author="dawm_fast",
                author_email="dawm_fast@users.noreply.github.com",
                code_permalink="dawm_fast/data/embedded.py", description=description,
                ref_min_score=ref_min_score, ref_max_score=ref_max_score, data_format="hdf5")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp_root / dataset_id, final)
        except OSError:
            # Another process (a second run started at the same time) finished the same dataset
            # first: same policies and seeds, so the same data. Keep theirs.
            if not is_local(dataset_id):
                raise
        # Namespace metadata files Minari wrote (e.g. dawm_fast/namespace_metadata.json)
        for meta in tmp_root.rglob("namespace_metadata.json"):
            dest = root / meta.relative_to(tmp_root)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(meta, dest)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


@contextlib.contextmanager
def _minari_store_at(path: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
