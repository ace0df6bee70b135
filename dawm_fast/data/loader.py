"""`load_dataset`: the one entry point from a task name to an OfflineDataset."""
from __future__ import annotations

from .dataset import DatasetError, OfflineDataset, concatenate
from .d4rl_file import read_d4rl_hdf5
from .embedded import load_embedded
from .minari_store import is_local, read_minari
from .tasks import parse_task

SOURCES = ("auto", "minari", "d4rl", "embedded")
# Minari's official MuJoCo sets (mujoco/<env>/<kind>-v0) have no medium-replay.
MINARI_KINDS = ("medium", "expert")


def official_minari_ids(env: str, kind: str) -> list[str] | None:
    parts = ["medium", "expert"] if kind == "medium-expert" else [kind]
    if any(p not in MINARI_KINDS for p in parts):
        return None
    return [f"mujoco/{env}/{p}-v0" for p in parts]


def load_dataset(name: str, source: str = "auto", path: str | None = None,
                 download: bool = False, log=print) -> OfflineDataset:
    """Load `name` (e.g. "walker2d-medium-expert") from `source`:

    - "minari":   Minari's official mujoco/<env>/<kind>-v0 sets (medium-expert = medium + expert),
                  from the local store, or downloaded when `download=True` and the hub is reachable
    - "d4rl":     a D4RL-layout .hdf5 file given by `path` (evaluated on Gymnasium v4 envs, the
                  closest to D4RL's v2 dynamics)
    - "embedded": the project's own D4RL-recipe datasets (generated on first use)
    - "auto":     real Minari data if it is in the local store, else embedded; it says which
    """
    family, kind = parse_task(name)
    if source not in SOURCES:
        raise DatasetError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "d4rl":
        if path is None:
            raise DatasetError("source='d4rl' needs path= (the D4RL .hdf5 file of this task)")
        return read_d4rl_hdf5(path, name, family.gym_id_v4, family.obs_dim, family.act_dim)
    ids = official_minari_ids(family.name, kind)
    if source == "minari" or (source == "auto" and ids and all(is_local(i) for i in ids)):
        if ids is None:
            raise DatasetError(f"Minari has no {kind} set for {family.name} (its MuJoCo sets are "
                               f"mujoco/{family.name}/{{simple,medium,expert}}-v0); use "
                               f"source='embedded' or source='d4rl' with a file")
        parts = [read_minari(i, f"{family.name}-{i.rsplit('/', 1)[1][:-3]}",
                             f"minari ({i})", download=download) for i in ids]
        ds = parts[0] if len(parts) == 1 else concatenate(
            name, parts, "minari (" + " + ".join(ids) + ")")
        ds.name = name
        log(f"[data] {name}: real Minari data ({', '.join(ids)})")
        return ds
    ds = load_embedded(family, kind, log=log)
    if source == "auto":
        log(f"[data] {name}: no official Minari data in the local store; using the embedded "
            f"dawm_fast dataset (made by this project's own behaviour policies on "
            f"{family.gym_id_v5})")
    return ds
