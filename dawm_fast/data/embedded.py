"""The project's own D4RL-recipe datasets, generated on first use from committed policy weights.

Each env family has ``policies/<env>.npz`` (actor weights in numpy: ``expert/*``, ``medium/*`` and
the training snapshots ``replay_XXX/*`` taken before the medium policy) and ``policies/<env>.json``
(how they were made: the training command, evaluation returns, the replay schedule).

Recipe (D4RL, see REFERENCE.md), on Gymnasium MuJoCo v5:
  expert         rollouts of the fully trained policy
  medium         rollouts of a policy stopped at about a third to a half of the expert's return
  medium-replay  the replay buffer of training up to the medium policy, rebuilt by rolling out the
                 training snapshots in order with the trainer's exploration noise (uniform random
                 actions for the first ``start_steps``), as the online trainer filled its buffer
  medium-expert  medium followed by expert

Datasets are written to the local Minari store under the namespace ``dawm_fast/`` (ids such as
``dawm_fast/walker2d/expert-v0``) so they never pass for Minari's official ``mujoco/`` sets.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DatasetError, OfflineDataset, concatenate
from .minari_store import is_local, read_minari, write_minari, writing_lock
from .numpy_policy import NumpyPolicy
from .tasks import EnvFamily

POLICY_DIR = Path(__file__).parent / "policies"
NAMESPACE = "dawm_fast"
DATASET_VERSION = "v0"


@dataclass(frozen=True)
class EmbeddedRecipe:
    """Sizes and noise of the generated datasets (changing them means a new DATASET_VERSION)."""
    expert_steps: int = 100_000      # D4RL: 1M; smaller keeps first-use generation to ~2 minutes
    medium_steps: int = 100_000
    rollout_noise: float = 0.1       # Gaussian action noise of medium/expert rollouts
    n_envs: int = 8                  # envs stepped in lockstep (one batched policy call per step)
    replay_steps: int | None = None  # cap on medium-replay (None: up to the medium policy, as D4RL)


RECIPE = EmbeddedRecipe()


def minari_id(env: str, kind: str) -> str:
    return f"{NAMESPACE}/{env}/{kind}-{DATASET_VERSION}"


def policy_files(env: str, policy_dir: Path | None = None) -> tuple[Path, Path]:
    d = policy_dir or POLICY_DIR
    return d / f"{env}.npz", d / f"{env}.json"


def has_policies(env: str) -> bool:
    return all(p.exists() for p in policy_files(env))


def _rollout_episodes(family: EnvFamily, policy, n_steps: int, noise: float, seed: int,
                      n_envs: int, progress) -> list[dict]:
    """Whole episodes of `policy` (+ Gaussian noise) until at least n_steps steps are collected."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    envs = [gym.make(family.gym_id_v5) for _ in range(n_envs)]
    next_seed = seed * 100_003
    obs, bufs = [], []
    for env in envs:
        o, _ = env.reset(seed=next_seed)
        next_seed += 1
        obs.append(o)
        bufs.append({"observations": [o], "actions": [], "rewards": [], "terminations": [],
                     "truncations": []})
    episodes, collected = [], 0
    while collected < n_steps:
        act = policy(np.stack(obs))
        act = np.clip(act + rng.normal(0, noise, act.shape), -1, 1).astype(np.float32)
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(act[i])
            b = bufs[i]
            b["observations"].append(o)
            b["actions"].append(act[i])
            b["rewards"].append(r)
            b["terminations"].append(term)
            b["truncations"].append(trunc)
            if term or trunc:
                if collected < n_steps:
                    episodes.append(b)
                    collected += len(b["actions"])
                    progress(len(b["actions"]))
                o, _ = env.reset(seed=next_seed)
                next_seed += 1
                bufs[i] = {"observations": [o], "actions": [], "rewards": [], "terminations": [],
                           "truncations": []}
            obs[i] = o
    for env in envs:
        env.close()
    return episodes


def replay_episodes(family: EnvFamily, snapshots: list[tuple[int, NumpyPolicy]], n_steps: int,
                     start_steps: int, noise: float, seed: int, progress) -> list[dict]:
    """Rebuild the online trainer's replay buffer up to n_steps: one env, stepped continuously,
    acting with the latest snapshot taken at or before the current step."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    env = gym.make(family.gym_id_v5)
    o, _ = env.reset(seed=seed)
    buf = {"observations": [o], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    episodes, k = [], -1
    for step in range(n_steps):
        while k + 1 < len(snapshots) and snapshots[k + 1][0] <= step:
            k += 1
        if step < start_steps or k < 0:
            a = rng.uniform(-1, 1, family.act_dim).astype(np.float32)
        else:
            a = snapshots[k][1](o[None])[0]
            a = np.clip(a + rng.normal(0, noise, a.shape), -1, 1).astype(np.float32)
        o, r, term, trunc, _ = env.step(a)
        trunc = trunc or step == n_steps - 1
        for key, v in (("observations", o), ("actions", a), ("rewards", r),
                       ("terminations", term), ("truncations", trunc)):
            buf[key].append(v)
        if term or trunc:
            episodes.append(buf)
            progress(len(buf["actions"]))
            o, _ = env.reset()
            buf = {"observations": [o], "actions": [], "rewards": [], "terminations": [],
                   "truncations": []}
    env.close()
    return episodes


def generate(family: EnvFamily, kind: str, recipe: EmbeddedRecipe | None = None, seed: int = 0,
             log=print, policy_dir: Path | None = None) -> None:
    """Generate one embedded dataset (medium, medium-replay or expert) into the Minari store,
    unless another process made it while this one waited for the store's lock."""
    dataset_id = minari_id(family.name, kind)
    with writing_lock(dataset_id):
        if is_local(dataset_id):
            log(f"[data] {dataset_id}: made by another process meanwhile; reading it")
            return
        _generate(family, kind, recipe, seed, log, policy_dir)


def _generate(family: EnvFamily, kind: str, recipe: EmbeddedRecipe | None, seed: int, log,
              policy_dir: Path | None) -> None:
    from tqdm import tqdm

    recipe = recipe or RECIPE

    env = family.name
    npz_path, meta_path = policy_files(env, policy_dir)
    meta = json.loads(meta_path.read_text())
    weights = np.load(npz_path)

    def policy(prefix: str) -> NumpyPolicy:
        return NumpyPolicy({k.split("/", 1)[1]: weights[k] for k in weights.files
                            if k.startswith(prefix + "/")})

    kind_seed = {"medium": 1, "medium-replay": 2, "expert": 3}[kind] + 10 * seed
    t0 = time.time()
    if kind == "medium-replay":
        replay = meta["replay"]
        n_steps = min(replay["steps"], recipe.replay_steps or replay["steps"])
        snaps = [(s, policy(f"replay_{i:03d}")) for i, s in enumerate(replay["snapshot_steps"])]
    else:
        n_steps = recipe.expert_steps if kind == "expert" else recipe.medium_steps
    bar = tqdm(total=n_steps, desc=f"generating {minari_id(env, kind)}", unit="step",
               mininterval=1.0)
    progress = bar.update
    if kind == "medium-replay":
        episodes = replay_episodes(family, snaps, n_steps, replay["start_steps"],
                                    replay["expl_noise"], kind_seed, progress)
    else:
        episodes = _rollout_episodes(family, policy(kind), n_steps, recipe.rollout_noise,
                                     kind_seed, recipe.n_envs, progress)
    bar.close()
    rets = [float(np.sum(e["rewards"])) for e in episodes]
    description = (f"dawm_fast embedded {kind} dataset for {family.gym_id_v5}, D4RL recipe, made "
                   f"by project code from committed TD3 behaviour policies "
                   f"({meta.get('command', '')}). Not an official Minari/D4RL dataset.")
    write_minari(minari_id(env, kind), episodes, family.gym_id_v5,
                 ref_min_score=meta["random_return"], ref_max_score=meta["expert_return"],
                 description=description, algorithm_name="TD3 (dawm_fast.behavior.online_td3)")
    log(f"[data] generated {minari_id(env, kind)}: {sum(len(e['actions']) for e in episodes):,} "
        f"steps, {len(episodes)} episodes, return {np.mean(rets):.1f} ± {np.std(rets):.1f}, "
        f"{time.time() - t0:.0f} s")


def load_embedded(family: EnvFamily, kind: str, log=print) -> OfflineDataset:
    env = family.name
    if not has_policies(env):
        raise DatasetError(f"no embedded {env} datasets yet: the behaviour policies "
                           f"{policy_files(env)[0].name} are not in this version of dawm_fast; "
                           f"use source='minari' or source='d4rl' with a file")
    parts = ["medium", "expert"] if kind == "medium-expert" else [kind]
    missing = [p for p in parts if not is_local(minari_id(env, p))]
    for part in missing:
        log(f"[data] {minari_id(env, part)} not in the local Minari store yet: generating it "
            f"from the committed {env} behaviour policies (first use only)")
    if len(missing) > 1 and (os.cpu_count() or 1) > 1 and "fork" in mp.get_all_start_methods():
        # medium and expert are independent: one process each (MuJoCo stepping is the cost).
        # fork, not spawn: spawn re-imports the caller's main module, which breaks scripts
        # without a __main__ guard; the children only run numpy and MuJoCo.
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(len(missing), mp_context=mp.get_context("fork")) as pool:
            for f in [pool.submit(generate, family, p, RECIPE, 0, print, POLICY_DIR) for p in missing]:
                f.result()
    else:
        for part in missing:
            generate(family, part, log=log)
    loaded = []
    for part in parts:
        src = f"embedded (dawm_fast, {family.gym_id_v5}, Minari id {minari_id(env, part)})"
        loaded.append(read_minari(minari_id(env, part), f"{env}-{part}", src))
    if len(loaded) == 1:
        return loaded[0]
    src = (f"embedded (dawm_fast, {family.gym_id_v5}, Minari ids "
           f"{' + '.join(minari_id(env, p) for p in parts)})")
    return concatenate(f"{env}-{kind}", loaded, src)


def write_random_policies(policy_dir: Path, family: EnvFamily, hidden: int = 32,
                          seed: int = 0) -> None:
    """Random-weight behaviour policies in the committed layout (expert, medium, two replay
    snapshots; PyTorch's default Linear init), with a metadata file saying so. For tests and for
    benchmarks that need *some* embedded data of the right shapes before real policies exist:
    datasets from them are not behaviour data and score nothing meaningful."""
    rng = np.random.default_rng(seed)
    arrays = {}
    dims = [family.obs_dim, hidden, hidden, family.act_dim]
    for name in ("expert", "medium", "replay_000", "replay_001"):
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / np.sqrt(d_in)
            arrays[f"{name}/W{i}"] = rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32)
            arrays[f"{name}/b{i}"] = rng.uniform(-bound, bound, d_out).astype(np.float32)
        arrays[f"{name}/max_action"] = np.float64(1.0)
    policy_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(policy_dir / f"{family.name}.npz", **arrays)
    meta = {"random_return": -5.0, "expert_return": 300.0,
            "command": "dawm_fast.data.embedded.write_random_policies (random weights: not "
                       "behaviour policies)",
            "replay": {"snapshot_steps": [0, 300], "steps": 600, "start_steps": 200,
                       "expl_noise": 0.1}}
    (policy_dir / f"{family.name}.json").write_text(json.dumps(meta))


@contextlib.contextmanager
def _private_store(policy_dir: Path, recipe: EmbeddedRecipe, minari_path: Path):
    """Within the block, embedded data comes from ``policy_dir`` with ``recipe``, generated into
    the Minari store at ``minari_path``; everything is put back on exit."""
    global POLICY_DIR, RECIPE
    saved = POLICY_DIR, RECIPE, os.environ.get("MINARI_DATASETS_PATH")
    POLICY_DIR, RECIPE = policy_dir, recipe
    os.environ["MINARI_DATASETS_PATH"] = str(minari_path)
    try:
        yield
    finally:
        POLICY_DIR, RECIPE = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved[2]


@contextlib.contextmanager
def random_policy_store(root: Path, family: EnvFamily, steps: int = 2500, n_envs: int = 4):
    """Within the block, embedded data for ``family`` comes from random-weight policies
    (``write_random_policies`` under ``root/policies``) at ``steps`` per part, generated into a
    private Minari store ``root/minari``. For tests and benchmarks that need small embedded
    datasets of the right shapes."""
    write_random_policies(root / "policies", family)
    with _private_store(root / "policies", EmbeddedRecipe(
            expert_steps=steps, medium_steps=steps, n_envs=n_envs), root / "minari"):
        yield root


@contextlib.contextmanager
def small_store(root: Path, steps: int = 2000, replay_steps: int = 3000, n_envs: int = 4):
    """Within the block, the committed behaviour policies generate small datasets (``steps`` per
    medium/expert part, medium-replay capped at ``replay_steps``) into a private Minari store
    ``root/minari``: the real generation path at test size."""
    with _private_store(POLICY_DIR, EmbeddedRecipe(
            expert_steps=steps, medium_steps=steps, n_envs=n_envs, replay_steps=replay_steps),
            root / "minari"):
        yield root
