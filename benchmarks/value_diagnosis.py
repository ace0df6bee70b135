"""Why does DAWM lose to its base learner? The value side of finished sweep runs (issue #18).

    python benchmarks/value_diagnosis.py SWEEP --env hopper-medium-replay --algo td3bc \
        --seeds 0,1 [--plain-sweep OTHER_SWEEP] [--episodes 5] [--rows 20000] [--json out.json]

For each seed it reads the DAWM run and the plain run of one sweep cell (`rl/<env>_<algo>_<arm>
_seed<s>`, their agent.pt) and the DAWM run's synthetic transitions, and prints:

- data: real vs synthetic rows (action size and saturation, reward, terminal rate) and coverage:
  the distance of a synthetic next state to its nearest real state, beside the same distance for
  real states of held-out episodes (standardized units);
- per agent (DAWM and plain), on real and on synthetic rows: Q(s, a), the one-step TD residual
  Q(s, a) - (r + gamma (1 - d) target) with the agent's own target (TD3+BC: target critic at the
  target actor's action; IQL: V(s')), the policy's squared distance to the row's action, and for
  IQL the advantage and AWR weight (the share of the actor's weight a 50/50 batch gives its
  synthetic rows), and on the real rows of the last 10 steps before a fall (a critic that learned
  falls values them low);
- the simulator check of the synthetic rows (dawm_fast.evaluation.dynamics_check): state and
  reward errors, falls missed and made up one step at a time and over whole windows replayed open
  loop from their real start state;
- target bias: on synthetic rows replayed in the simulator, the agent's TD target of the
  synthetic (r, s', d) minus that of the simulator's for the same (s, a), split into the reward's,
  the next state's and the terminal flag's parts (with the plain agent as the judge, a positive
  next-state part is a world model generating better next states than its (s, a) reach);
- value calibration: the agent's Q(s, pi(s)) on the states its own policy visits in `episodes`
  fresh episodes, beside the discounted return that followed (states with at least 300 steps of
  episode left or a termination ahead only, so a cut episode's missing tail cannot bias it). A
  critic that learned on transitions its policy cannot reach overestimates here.

Everything is read-only; nothing in the run directories changes. Measured with it: RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

NEAR_FALL = 10         # steps before a terminal that count as 'near a fall'
GAMMA_TAIL = 300        # calibration: steps of episode left for a state to count (0.99^300 ~ 0.05)


def load_run(run_dir: Path):
    """(config, agent) of a finished RL run, the agent on the CPU with its final weights."""
    from dawm_fast import backends
    from dawm_fast.config import config_from_dict
    from dawm_fast.run_io import load_checkpoint

    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    state = load_checkpoint(run_dir / "agent.pt", "rl", ("agent",))["agent"]
    obs_dim = len(state["obs_norm"]["mean"])
    act_dim = _act_dim(state)
    agent = backends.rl_agent("reference", cfg.algo, obs_dim, act_dim, getattr(cfg, cfg.algo),
                              "cpu", None, None, seed=cfg.seed, gamma=cfg.gamma,
                              total_steps=cfg.rl_steps)
    agent.load_state_dict(state)
    return cfg, agent


def _act_dim(state: dict) -> int:
    weights = [v for k, v in state["actor"].items() if k.endswith("weight")]
    return int(weights[-1].shape[0])


def transitions(arrays: dict, mean, std, reward_scale: float | None, rows: np.ndarray):
    from dawm_fast.rl.buffer import Transitions

    t = Transitions.from_numpy(*(np.asarray(arrays[k])[rows] for k in (
        "observations", "actions", "rewards", "next_observations")),
        np.asarray(arrays["terminals"])[rows].astype(np.float32)).normalized(mean, std)
    return t.scaled_rewards(reward_scale) if reward_scale else t


@torch.no_grad()
def agent_on(agent, algo: str, t) -> dict:
    """Q, TD residual, policy-to-action distance (and IQL's advantage and AWR weight) on rows t
    (observations standardized, rewards as the agent trained on them)."""
    from dawm_fast.rl.iql import awr_weights

    obs, act, nxt = t.observations, t.actions, t.next_observations
    if algo == "td3bc":
        q = torch.min(*agent.critic(obs, act))
        target = torch.min(*agent.critic_target(nxt, agent.actor_target(nxt)))
        pi = agent.actor(obs)
        q_pi = torch.min(*agent.critic(obs, pi))
        out = {}
    else:
        q = torch.min(*agent.qf(obs, act))
        target = agent.vf(nxt)
        pi = agent.actor(obs) if agent.cfg.deterministic_actor else agent.actor.mean_action(obs)
        q_pi = torch.min(*agent.qf(obs, pi))
        adv = torch.min(*agent.q_target(obs, act)) - agent.vf(obs)
        w = awr_weights(adv, agent.cfg.beta, agent.cfg.max_exp_adv)
        out = {"advantage": float(adv.mean()), "awr_weight": float(w.mean()),
               "awr_weight_at_cap": float((w >= agent.cfg.max_exp_adv).float().mean())}
    residual = q - (t.rewards + (1.0 - t.terminals) * agent.gamma * target)
    out.update(q=float(q.mean()), q_pi_minus_q=float((q_pi - q).mean()),
               td_residual=float(residual.mean()), td_rms=float(residual.square().mean().sqrt()),
               policy_action_mse=float((pi - act).square().mean()))
    return out


def rollout_calibration(agent, algo: str, env_id: str, episodes: int, seed: int,
                        gamma: float, reward_scale: float | None) -> dict:
    """Mean Q(s, pi(s)) over visited states vs the discounted return that followed them."""
    from dawm_fast.data.windows import discounted_returns_to_go
    from dawm_fast.evaluation.rollout import evaluate_policy

    res = evaluate_policy(agent.act, env_id, episodes, seed, record=True)
    critic = agent.critic if algo == "td3bc" else agent.qf
    qs, gs = [], []
    for traj in res.trajectories:
        rewards = traj.rewards * (reward_scale or 1.0)
        ends = np.zeros(len(rewards), bool)
        ends[-1] = True
        g = discounted_returns_to_go(rewards, ends, gamma)
        # a time-limit cut leaves the return of the last steps unknown: drop their tail
        keep = np.arange(len(rewards)) if traj.terminated else np.arange(
            max(0, len(rewards) - GAMMA_TAIL))
        if len(keep) == 0:
            continue
        states = traj.observations[keep].astype(np.float32)
        with torch.no_grad():
            x = agent.obs_norm(torch.as_tensor(states))
            qs.append(torch.min(*critic(x, torch.as_tensor(agent.act(states)))).numpy())
        gs.append(g[keep])
    q, g = (np.concatenate(v) if v else np.zeros(0) for v in (qs, gs))
    return {"episodes": episodes, "return_mean": res.mean, "states": int(q.size),
            "q_pi": float(q.mean()) if q.size else None,
            "discounted_return": float(g.mean()) if g.size else None,
            "overestimate": float((q - g).mean()) if q.size else None}


@torch.no_grad()
def target_bias(agent, algo: str, env: str, syn: dict, mean, std, reward_scale: float | None,
                n: int, seed: int) -> dict:
    """How far the TD targets of synthetic rows sit from the targets the true dynamics would give
    the same (s, a), under this agent's own target (TD3+BC: target critic at the target actor's
    action; IQL: V). Each row is replayed in the simulator; the difference splits exactly into
    the reward's error, the next state's (its value under the agent, gamma V(s'_syn) -
    gamma V(s'_sim), where the simulator goes on) and the terminal flag's. With the plain agent as
    the judge, a positive next-state part means the world model generates next states better than
    the ones its (s, a) reach: optimism a DAWM critic learns from."""
    from dawm_fast.data.tasks import env_family
    from dawm_fast.evaluation.dynamics_check import pins_down_state, simulate, window_positions

    family = env_family(env)
    obs = np.asarray(syn["observations"])
    position = window_positions(obs, np.asarray(syn["next_observations"]))
    rows = np.flatnonzero(pins_down_state(family, obs))
    rows = np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False)
    act = np.asarray(syn["actions"])[rows]
    sim_next, sim_r, sim_d = simulate(family, obs[rows], act)
    scale = reward_scale or 1.0

    def value(next_obs: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(((next_obs - mean) / std).astype(np.float32))
        if algo == "td3bc":
            return torch.min(*agent.critic_target(x, agent.actor_target(x)))
        return agent.vf(x)

    v_syn = value(np.asarray(syn["next_observations"])[rows])
    v_sim = value(sim_next)
    d_syn = torch.as_tensor(np.asarray(syn["terminals"])[rows].astype(np.float32))
    d_sim = torch.as_tensor(sim_d.astype(np.float32))
    g = agent.gamma
    parts = {"reward": scale * (torch.as_tensor(np.asarray(syn["rewards"])[rows]).float()
                                - torch.as_tensor(sim_r).float()),
             "next_state": g * (1 - d_sim) * (v_syn - v_sim),
             "terminal": g * (d_sim - d_syn) * v_syn}
    total = sum(parts.values())
    out = {f"{k}_mean": float(v.mean()) for k, v in parts.items()}
    out.update(rows=int(len(rows)), total_mean=float(total.mean()),
               total_rms=float(total.square().mean().sqrt()),
               next_state_value_sim=float(v_sim.mean()),
               # step 0 has the real a_t, later steps the inferred actions along the window
               by_window_step={name: [float(v[position[rows] == k].mean())
                                      for k in range(int(position.max()) + 1)
                                      if (position[rows] == k).any()]
                               for name, v in {**parts, "total": total}.items()})
    return out


def coverage(real_obs: np.ndarray, episode_ends: np.ndarray, syn_next: np.ndarray,
             mean, std, n_query: int, rng: np.random.Generator) -> dict:
    """Nearest-real-state distance (standardized) of synthetic next states vs of real states of
    held-out episodes (odd episodes queried against even ones; synthetic against even ones too)."""
    episode = np.concatenate([[0], np.cumsum(episode_ends[:-1])])
    ref = torch.as_tensor((real_obs[episode % 2 == 0] - mean) / std)
    held = (real_obs[episode % 2 == 1] - mean) / std
    syn = (syn_next - mean) / std

    def nearest(x: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x[rng.choice(len(x), min(n_query, len(x)), replace=False)])
        return torch.cat([torch.cdist(c, ref).min(1).values for c in x.split(256)]).numpy()

    d_held, d_syn = nearest(held), nearest(syn)
    return {"held_out_real": _quantiles(d_held), "synthetic_next": _quantiles(d_syn)}


def _quantiles(d: np.ndarray) -> dict:
    return {"mean": float(d.mean()), "median": float(np.median(d)),
            "p90": float(np.quantile(d, 0.9))}


def near_fall_rows(ds) -> np.ndarray:
    """Rows within NEAR_FALL steps before (and at) a terminal transition of the same episode."""
    terminal = np.flatnonzero(ds.terminals)
    ends = ds.episode_ends
    rows = []
    for t in terminal:
        lo = t
        while lo > t - NEAR_FALL + 1 and lo > 0 and not ends[lo - 1]:
            lo -= 1
        rows.append(np.arange(lo, t + 1))
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def synthetic_check(env: str, syn: dict, real: dict, seed: int, n: int = 20_000) -> dict:
    """dynamics_check on n synthetic rows and windows: errors, falls missed and made up."""
    from dawm_fast.data.tasks import env_family
    from dawm_fast.evaluation.dynamics_check import check

    rep = check(env_family(env), syn, real, n, seed)
    return {k: rep[k] for k in ("synthetic", "real_fall_rate", "windows")}


def data_stats(arrays: dict) -> dict:
    a = np.asarray(arrays["actions"])
    return {"rows": int(len(a)), "action_abs": float(np.abs(a).mean()),
            "action_saturated": float((np.abs(a) > 0.99).mean()),
            "reward_mean": float(np.mean(arrays["rewards"])),
            "reward_std": float(np.std(arrays["rewards"])),
            "terminal_rate": float(np.mean(arrays["terminals"]))}


def diagnose_seed(sweep: Path, env: str, algo: str, seed: int, rows: int, episodes: int,
                  plain_sweep: Path | None = None, bias_rows: int = 5_000) -> dict:
    from dawm_fast.data.dataset import run_subset
    from dawm_fast.data.loader import load_dataset
    from dawm_fast.rl.buffer import compute_obs_stats, iql_reward_scale

    runs = {arm: ((plain_sweep or sweep) if arm == "plain" else sweep) / "rl" /
            f"{env}_{algo}_{arm}_seed{seed}" for arm in ("dawm", "plain")}
    if not (runs["dawm"] / "agent.pt").exists():
        raise SystemExit(f"{runs['dawm']} has no agent.pt: give a sweep whose DAWM run finished "
                         "here (exported results keep no checkpoints)")
    if not (runs["plain"] / "agent.pt").exists():
        # a plain run copied in from an exported report: its numbers are in that report's
        # diagnosis; here the DAWM agent alone
        print(f"[value_diagnosis] {runs['plain']} has no agent.pt (exported, no checkpoints): "
              "the DAWM agent only", flush=True)
        del runs["plain"]
    agents = {arm: load_run(d) for arm, d in runs.items()}
    cfg = agents["dawm"][0]
    ds = run_subset(load_dataset(env, source=cfg.data_source, path=cfg.data_path),
                    cfg.max_transitions, cfg.episode_fraction, cfg.seed)
    real = {k: getattr(ds, k) for k in ("observations", "actions", "rewards",
                                        "next_observations", "terminals")}
    syn = dict(np.load(sweep / cfg.world_model_dir / "synthetic.npz"))
    if cfg.synthetic_terminals == "classifier":
        # the rows the run trained on: its falls relabelled as its RL stage relabelled them
        from dawm_fast.data.normalizers import Normalizer
        from dawm_fast.world_model import fall_classifier

        norm = Normalizer.load(sweep / cfg.world_model_dir / "normalizers" / "states.npz")
        syn, _ = fall_classifier.classify_synthetic_falls(
            syn, real, norm.normalize, cfg.fall_classifier, "cpu",
            seed=cfg.seed + fall_classifier.SEED_OFFSET)
    mean, std = compute_obs_stats(ds.observations)
    scale = (iql_reward_scale(ds.rewards, ds.episode_ends)
             if algo == "iql" and cfg.iql.normalize_reward else None)
    rng = np.random.default_rng(seed)
    sets = {name: transitions(arrs, mean, std, scale,
                              rng.choice(len(arrs["rewards"]), min(rows, len(arrs["rewards"])),
                                         replace=False))
            for name, arrs in (("real", real), ("synthetic", syn))}
    # Where the data says the hopper/walker falls: the last NEAR_FALL steps of every episode that
    # ends in a terminal. A critic that learned falls values these low.
    sets["real_near_fall"] = transitions(real, mean, std, scale, near_fall_rows(ds))
    out = {"seed": seed, "data": {"real": data_stats(real), "synthetic": data_stats(syn)},
           "coverage": coverage(ds.observations, ds.episode_ends, syn["next_observations"],
                                mean, std, 2000, rng),
           "simulator": synthetic_check(env, syn, real, seed)}
    for arm, (run_cfg, agent) in agents.items():
        score = json.loads((runs[arm] / "results.json").read_text()).get("final_score_mean")
        out[arm] = {"final_score": score,
                    **{name: agent_on(agent, algo, t) for name, t in sets.items()},
                    "target_bias": target_bias(agent, algo, env, syn, mean, std, scale,
                                               bias_rows, seed),
                    "calibration": rollout_calibration(agent, algo, ds.eval_env_id, episodes,
                                                       20_000 + seed * 100, run_cfg.gamma, scale)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--env", required=True)
    p.add_argument("--algo", required=True, choices=("td3bc", "iql"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--plain-sweep", type=Path,
                   help="the sweep holding the plain runs (default: SWEEP)")
    p.add_argument("--rows", type=int, default=20_000, help="real and synthetic rows sampled")
    p.add_argument("--episodes", type=int, default=5, help="calibration episodes per agent")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every seed's numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        res = diagnose_seed(args.sweep, args.env, args.algo, seed, args.rows, args.episodes,
                            args.plain_sweep)
        print(json.dumps(res), flush=True)
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps({"env": args.env, "algo": args.algo, "seeds": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
