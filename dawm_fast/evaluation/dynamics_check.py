"""How far synthetic transitions are from the true dynamics, measured with the simulator.

    python -m dawm_fast.evaluation.dynamics_check runs/walker2d-medium-expert_td3bc_cpu_ratio0.5_seed0

A diagnostic, never a filter: DAWM is offline and the pipeline never queries the env for training
data. Here each transition (s, a, r, s') — synthetic, or real for the floor — is replayed in the
Gymnasium v5 env: the simulator is put in state s and stepped with a. MuJoCo locomotion dynamics do
not depend on the x position the observation leaves out, so s fixes the state (qpos[0] = 0), except
where a hopper/walker2d observation shows a velocity at its +-10 clip: such rows are left out (the
share is reported). On real data the replay then matches to float precision (the floor).
Reported, overall and by the step's place in its generated window (errors compound along a window):

- ``state_error``: mean over values of ((s' - sim s') / std)^2, std per dimension of the real
  observations; ``still_error`` is the same for "nothing moves" (s' = s) on real data, for scale;
- ``reward_rmse``: RMS of r - sim r, beside the real rewards' std;
- ``terminal_agreement``: share of steps whose terminal flag equals the simulator's;
  ``missed_falls`` / ``made_up_falls``: share of steps the simulator ends and the flag does not /
  the flag ends and the simulator does not (beside ``falls``, the flags' own rate, and the real
  data's rate in ``real_fall_rate``).

``windows``: whole synthetic windows replayed open loop from their real start state (the
simulator takes the window's actions one after another and stops where it falls): how often the
window falls, how often the simulator does, and the return the window adds over the simulator's.
A world model that leans away from falls shows many more falls left out than made up. Open loop,
small errors compound, and a perturbed hopper or walker falls more readily than it recovers, so
some excess of falls left out is expected of any imperfect model; the one-step counts above have
no such bias.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dawm_fast.data.tasks import EnvFamily, env_family
from dawm_fast.evaluation.rollout import make_env
from dawm_fast.run_io import RunError, load_arrays, write_json


def simulate(family: EnvFamily, observations: np.ndarray, actions: np.ndarray,
             env_id: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The env's (next observation, reward, terminated) for each (observation, action) row, in
    `env_id` (default: the family's v5 env, which the Minari and embedded data were made on)."""
    env = make_env(env_id or family.gym_id_v5)
    env.reset(seed=0)
    sim = env.unwrapped
    nq = sim.model.nq
    n = len(observations)
    next_obs = np.empty((n, family.obs_dim), np.float64)
    rewards, terminated = np.empty(n), np.zeros(n, bool)
    try:
        for i in range(n):
            qpos = np.concatenate([[0.0], observations[i, :nq - 1]])
            sim.set_state(qpos, observations[i, nq - 1:])
            next_obs[i], rewards[i], terminated[i], _, _ = env.step(actions[i])
    finally:
        env.close()
    return next_obs, rewards, terminated


def pins_down_state(family: EnvFamily, observations: np.ndarray) -> np.ndarray:
    """bool [N]: the observation fixes the simulator state (no velocity at the obs clip)."""
    if family.obs_velocity_clip is None:
        return np.ones(len(observations), bool)
    # observation = qpos[1:] (nq - 1 values), then qvel (nv = nq for these planar robots)
    velocities = observations[:, (family.obs_dim - 1) // 2:]
    return (np.abs(velocities) < family.obs_velocity_clip * (1 - 1e-6)).all(axis=1)


def window_positions(observations: np.ndarray, next_observations: np.ndarray) -> np.ndarray:
    """Place of each transition in its window: generation writes a window's steps in order, so a
    step continues a window exactly when its s equals the previous step's s'."""
    n = len(observations)
    starts = np.ones(n, bool)
    starts[1:] = ~(observations[1:] == next_observations[:-1]).all(axis=1)
    rows = np.arange(n)
    return rows - np.maximum.accumulate(np.where(starts, rows, 0))   # rows since the window start


def transition_errors(family: EnvFamily, batch: dict, state_std: np.ndarray,
                      env_id: str | None = None) -> dict:
    """Per-row standardized next-state squared error, reward error and terminal agreement."""
    sim_next, sim_rew, sim_term = simulate(family, batch["observations"], batch["actions"],
                                           env_id)
    z = (batch["next_observations"] - sim_next) / state_std
    return {"state_error": (z ** 2).mean(axis=1),
            "reward_error": batch["rewards"] - sim_rew,
            "fall": batch["terminals"] > 0.5, "simulator_fall": sim_term}


def _summary(err: dict, rows: np.ndarray | slice = slice(None)) -> dict:
    fall, sim = err["fall"][rows], err["simulator_fall"][rows]
    return {"n": int(np.asarray(err["state_error"][rows]).size),
            "state_error": float(np.mean(err["state_error"][rows])),
            "reward_rmse": float(np.sqrt(np.mean(err["reward_error"][rows] ** 2))),
            "terminal_agreement": float(np.mean(fall == sim)),
            "falls": float(np.mean(fall)), "missed_falls": float(np.mean(sim & ~fall)),
            "made_up_falls": float(np.mean(fall & ~sim))}


def window_falls(family: EnvFamily, synthetic: dict, n: int, rng: np.random.Generator,
                 env_id: str | None = None) -> dict:
    """Up to `n` synthetic windows (with a pinned start state) replayed open loop: see the
    module docstring, ``windows``."""
    pos = window_positions(synthetic["observations"], synthetic["next_observations"])
    starts = np.flatnonzero(pos == 0)
    stops = np.append(starts[1:], len(pos))                    # one past each window's last step
    pick = np.sort(rng.choice(len(starts), min(n, len(starts)), replace=False))
    pick = pick[pins_down_state(family, synthetic["observations"][starts[pick]])]
    env = make_env(env_id or family.gym_id_v5)
    env.reset(seed=0)
    sim, nq = env.unwrapped, env.unwrapped.model.nq
    fell, sim_fell = np.zeros(len(pick), bool), np.zeros(len(pick), bool)
    added = np.zeros(len(pick))
    try:
        for i, w in enumerate(pick):
            lo, hi = starts[w], stops[w]
            obs0 = synthetic["observations"][lo]
            sim.set_state(np.concatenate([[0.0], obs0[:nq - 1]]), obs0[nq - 1:])
            sim_return = 0.0
            for k in range(lo, hi):
                _, r, terminated, _, _ = env.step(synthetic["actions"][k])
                sim_return += float(r)
                if terminated:
                    sim_fell[i] = True
                    break
            fell[i] = synthetic["terminals"][hi - 1] > 0.5
            added[i] = float(np.sum(synthetic["rewards"][lo:hi])) - sim_return
    finally:
        env.close()
    return {"n": int(len(pick)), "falls": float(fell.mean()),
            "simulator_falls": float(sim_fell.mean()),
            "falls_left_out": float((sim_fell & ~fell).mean()),
            "falls_made_up": float((fell & ~sim_fell).mean()),
            "return_added": float(added.mean())}


def check(family: EnvFamily, synthetic: dict, real: dict, n: int, seed: int,
          env_id: str | None = None) -> dict:
    """Simulator check of up to `n` synthetic and `n` real transitions drawn with `seed`, each a
    dict of arrays observations, actions, rewards, next_observations, terminals."""
    rng = np.random.default_rng(seed)
    state_std = real["observations"].std(axis=0) + 1e-6
    pos = window_positions(synthetic["observations"], synthetic["next_observations"])

    pinned = {k: pins_down_state(family, d["observations"])
              for k, d in (("synthetic", synthetic), ("real", real))}

    def draw(data, ok):
        ok = np.flatnonzero(ok)
        idx = np.sort(rng.choice(ok, min(n, len(ok)), replace=False))
        return idx, {k: np.asarray(data[k][idx], np.float64) for k in
                     ("observations", "actions", "rewards", "next_observations", "terminals")}

    s_idx, s_batch = draw(synthetic, pinned["synthetic"])
    r_idx, r_batch = draw(real, pinned["real"])
    s_err = transition_errors(family, s_batch, state_std, env_id)
    r_err = transition_errors(family, r_batch, state_std, env_id)
    still = (((r_batch["next_observations"] - r_batch["observations"]) / state_std) ** 2).mean()
    by_pos = {int(p): _summary(s_err, pos[s_idx] == p) for p in np.unique(pos[s_idx])}
    left_out = {k: float(1 - ok.mean()) for k, ok in pinned.items()}
    return {"env": env_id or family.gym_id_v5, "seed": seed, "left_out_velocity_clip": left_out,
            "synthetic": _summary(s_err), "synthetic_by_window_step": by_pos,
            "real_floor": _summary(r_err), "still_error": float(still),
            "real_reward_std": float(real["rewards"].std()),
            "real_fall_rate": float(np.mean(real["terminals"])),
            "windows": window_falls(family, synthetic, n, rng, env_id)}


def dataset_arrays(ds) -> dict:
    """The transition arrays `check` takes, from an OfflineDataset."""
    return {"observations": ds.observations, "actions": ds.actions, "rewards": ds.rewards,
            "next_observations": ds.next_observations, "terminals": ds.terminals}


def format_report(rep: dict) -> str:
    out = rep["left_out_velocity_clip"]
    lines = [f"simulator check on {rep['env']} (state error: standardized MSE; 'nothing moves' "
             f"scores {rep['still_error']:.3f}; real reward std {rep['real_reward_std']:.3f}; "
             f"left out, a velocity at the obs clip: {out['real']:.1%} real, "
             f"{out['synthetic']:.1%} synthetic)",
             f"{'':>16} {'n':>7} {'state err':>10} {'reward rmse':>12} {'terminal ok':>12}"]

    def row(name, s):
        lines.append(f"{name:>16} {s['n']:>7} {s['state_error']:>10.4f} {s['reward_rmse']:>12.4f} "
                     f"{s['terminal_agreement']:>12.4f}")
    row("real (floor)", rep["real_floor"])
    row("synthetic", rep["synthetic"])
    for p, s in rep["synthetic_by_window_step"].items():
        row(f"window step {p}", s)
    s, w = rep["synthetic"], rep["windows"]
    lines.append(f"falls per step: synthetic {s['falls']:.2%} (real data {rep['real_fall_rate']:.2%});"
                 f" against the simulator {s['missed_falls']:.2%} missed, "
                 f"{s['made_up_falls']:.2%} made up")
    lines.append(f"{w['n']} windows replayed open loop: {w['falls']:.1%} fall, the simulator "
                 f"{w['simulator_falls']:.1%} ({w['falls_left_out']:.1%} left out, "
                 f"{w['falls_made_up']:.1%} made up); return added {w['return_added']:+.3f} "
                 f"per window")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a pipeline run directory with synthetic.npz")
    p.add_argument("--n", type=int, default=20_000, help="transitions checked of each kind")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from dawm_fast.data import load_dataset                   # lazy: the data layer is heavy
    cfg_path, syn_path = args.run_dir / "config.json", args.run_dir / "synthetic.npz"
    for path in (cfg_path, syn_path):
        if not path.exists():
            raise SystemExit(f"{path} not found: give a pipeline run directory whose generation "
                             "stage has finished")
    from dawm_fast.data import DatasetError, UnknownTaskError
    try:
        cfg = json.loads(cfg_path.read_text())
        env = cfg["env"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {cfg_path} is corrupt ({type(e).__name__}); give a pipeline "
                         f"run directory") from None
    try:
        synthetic = load_arrays(syn_path, "generation", ("observations", "actions", "rewards",
                                                         "next_observations", "terminals"))
        ds = load_dataset(env, source=cfg.get("data_source", "auto"), path=cfg.get("data_path"))
    except (RunError, DatasetError, UnknownTaskError) as e:
        raise SystemExit(f"error: {e}") from None
    rep = check(env_family(env), synthetic, dataset_arrays(ds), args.n, args.seed,
                env_id=ds.eval_env_id)
    rep["dataset_source"] = ds.source
    print(f"[dynamics_check] real data: {ds.source}")
    print(format_report(rep))
    out = args.run_dir / "dynamics_check.json"
    write_json(out, rep)
    print(f"[dynamics_check] wrote {out}")


if __name__ == "__main__":
    main()
