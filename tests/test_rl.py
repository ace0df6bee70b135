"""Offline RL: transition buffer and mixed sampler, TD3+BC, IQL.

Inputs are fresh random draws every run; each test prints its seed (pytest shows it on failure).
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dawm_fast.rl import (IQL, TD3BC, IQLConfig, MixedSampler, TD3BCConfig, Transitions,
                          compute_obs_stats, episode_returns, iql_config_for, iql_reward_scale)
from dawm_fast.rl.iql import awr_weights, expectile_loss
from dawm_fast.rl.td3bc import td3bc_actor_loss

torch.set_num_threads(1)


@pytest.fixture
def seed(request) -> int:
    s = int(np.random.SeedSequence().entropy % 2**31)
    print(f"{request.node.name}: seed {s}")
    return s


def random_transitions(n: int, obs_dim: int, act_dim: int, gen: torch.Generator,
                       reward: float | None = None) -> Transitions:
    rew = torch.randn(n, generator=gen) if reward is None else torch.full((n,), reward)
    return Transitions(torch.randn(n, obs_dim, generator=gen),
                       torch.rand(n, act_dim, generator=gen) * 2 - 1, rew,
                       torch.randn(n, obs_dim, generator=gen),
                       (torch.rand(n, generator=gen) < 0.3).float())


def assert_state_equal(a, b, path="state"):
    """Bit-exact equality of nested state dicts (tensors, numbers, lists)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------- buffer


def test_transitions_from_numpy_dict_and_arrays(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 50))
    d = {"observations": rng.normal(size=(n, 4)), "actions": rng.uniform(-1, 1, (n, 2)),
         "rewards": rng.normal(size=(n, 1)), "next_observations": rng.normal(size=(n, 4)),
         "terminals": rng.random(n) < 0.5, "timeouts": np.zeros(n, bool)}
    t = Transitions.from_numpy(d)
    assert len(t) == n and t.rewards.shape == (n,) and t.terminals.dtype == torch.float32
    np.testing.assert_array_equal(t.terminals.numpy(), d["terminals"].astype(np.float32))
    np.testing.assert_array_equal(t.rewards.numpy(), d["rewards"][:, 0].astype(np.float32))
    t2 = Transitions.from_numpy(d["observations"], d["actions"], d["rewards"],
                                d["next_observations"], d["terminals"])
    assert_state_equal(t.__dict__, t2.__dict__)
    with pytest.raises(ValueError, match="rows"):
        Transitions.from_numpy(d["observations"][:-1], d["actions"], d["rewards"],
                               d["next_observations"], d["terminals"])
    with pytest.raises(ValueError, match="lacks keys.*terminals"):
        Transitions.from_numpy({k: v for k, v in d.items() if k != "terminals"})


@pytest.mark.parametrize("ratio,batch", [(0.0, 64), (0.25, 64), (0.3, 100), (0.5, 256),
                                         (0.9, 37), (0.7, 37), (1.0, 64)])
def test_mixed_sampler_exact_counts(seed, ratio, batch):
    g = torch.Generator().manual_seed(seed)
    real = random_transitions(int(torch.randint(5, 300, (1,), generator=g)), 3, 2, g, reward=0.0)
    syn = random_transitions(int(torch.randint(5, 300, (1,), generator=g)), 3, 2, g, reward=1.0)
    sampler = MixedSampler(real, syn, ratio, batch, torch.Generator().manual_seed(seed))
    n_syn = round(batch * ratio)
    real_obs = {tuple(r) for r in real.observations.tolist()}
    syn_obs = {tuple(r) for r in syn.observations.tolist()}
    for _ in range(5):
        b = sampler.sample()
        assert len(b) == batch
        assert int(b.rewards.sum()) == n_syn                  # synthetic rows carry reward 1
        rows = [tuple(r) for r in b.observations.tolist()]
        assert sum(r in syn_obs for r in rows) == n_syn       # and are synthetic rows
        assert sum(r in real_obs for r in rows) == batch - n_syn


def test_mixed_sampler_covers_both_sources_uniformly(seed):
    g = torch.Generator().manual_seed(seed)
    real = random_transitions(7, 2, 1, g)
    syn = random_transitions(5, 2, 1, g)
    sampler = MixedSampler(real, syn, 0.5, 200, torch.Generator().manual_seed(seed))
    counts = torch.zeros(12)
    full = torch.cat([real.observations, syn.observations])
    for _ in range(20):
        b = sampler.sample()
        idx = (b.observations[:, None, :] == full[None]).all(-1).float().argmax(1)
        counts += torch.bincount(idx, minlength=12)
    # 2000 draws per source: real rows ~ 2000/7, synthetic ~ 2000/5 each.
    assert (counts[:7] - 2000 / 7).abs().max() < 100 and (counts[7:] - 400).abs().max() < 120


def test_mixed_sampler_reproducible_and_resumable(seed):
    g = torch.Generator().manual_seed(seed)
    real, syn = random_transitions(500, 4, 2, g), random_transitions(300, 4, 2, g)

    def batches(s, k):
        return [s.sample().observations for _ in range(k)]

    a = MixedSampler(real, syn, 0.5, 32, torch.Generator().manual_seed(seed))
    b = MixedSampler(real, syn, 0.5, 32, torch.Generator().manual_seed(seed))
    c = MixedSampler(real, syn, 0.5, 32, torch.Generator().manual_seed(seed + 1))
    ba, bb, bc = batches(a, 3), batches(b, 3), batches(c, 3)
    assert all(torch.equal(x, y) for x, y in zip(ba, bb))
    assert not torch.equal(ba[0], bc[0])
    state = a.state_dict()
    after = batches(a, 2)
    c.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(after, batches(c, 2)))


def test_mixed_sampler_baseline_without_synthetic(seed):
    g = torch.Generator().manual_seed(seed)
    real = random_transitions(100, 3, 2, g)
    b0 = MixedSampler(real, None, 0.0, 64, torch.Generator().manual_seed(seed)).sample()
    syn = random_transitions(50, 3, 2, g)
    b1 = MixedSampler(real, syn, 0.0, 64, torch.Generator().manual_seed(seed)).sample()
    assert_state_equal(b0.__dict__, b1.__dict__)    # ratio 0 ignores synthetic data entirely


def test_mixed_sampler_errors(seed):
    g = torch.Generator().manual_seed(seed)
    real = random_transitions(50, 3, 2, g)
    syn = random_transitions(50, 3, 2, g)
    gen = torch.Generator()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="synthetic_ratio must be in"):
            MixedSampler(real, syn, bad, 64, gen)
    with pytest.raises(ValueError, match="needs synthetic transitions"):
        MixedSampler(real, None, 0.5, 64, gen)
    with pytest.raises(ValueError, match="needs synthetic transitions"):
        MixedSampler(real, random_transitions(0, 3, 2, g), 0.5, 64, gen)
    with pytest.raises(ValueError, match="synthetic observations have dim 4, real have 3"):
        MixedSampler(real, random_transitions(50, 4, 2, g), 0.5, 64, gen)
    with pytest.raises(ValueError, match="synthetic actions have dim 1, real have 2"):
        MixedSampler(real, random_transitions(50, 3, 1, g), 0.5, 64, gen)
    with pytest.raises(ValueError, match="batch_size"):
        MixedSampler(real, syn, 0.5, 0, gen)


def test_obs_stats_and_normalization(seed):
    rng = np.random.default_rng(seed)
    obs = rng.normal(3.0, 2.0, size=(400, 5))
    obs[:, 2] = 7.0                                     # a constant dimension stays finite
    mean, std = compute_obs_stats(obs)
    np.testing.assert_allclose(mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, obs.std(0) + 1e-3, rtol=1e-6)
    t = Transitions.from_numpy(obs, rng.normal(size=(400, 2)), rng.normal(size=400),
                               obs[::-1].copy(), np.zeros(400))
    tn = t.normalized(mean, std)
    np.testing.assert_allclose(tn.observations.numpy(), (obs - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tn.next_observations.numpy(), (obs[::-1] - mean) / std,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(tn.actions, t.actions) and torch.equal(tn.rewards, t.rewards)


def test_iql_reward_scale(seed):
    # Hand example: complete episodes return 3 and 4; the unfinished tail (5) is left out.
    r = [1, 1, 1, 2, 2, 5]
    ends = [0, 0, 1, 0, 1, 0]
    np.testing.assert_array_equal(episode_returns(r, ends), [3.0, 4.0])
    assert iql_reward_scale(r, ends) == pytest.approx(1000.0)
    # Random episodes against a plain loop.
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 30, size=int(rng.integers(2, 10)))
    rewards = rng.normal(size=lens.sum())
    ends = np.zeros(lens.sum(), bool)
    ends[np.cumsum(lens) - 1] = True
    loop, acc = [], 0.0
    for x, e in zip(rewards, ends):
        acc += x
        if e:
            loop.append(acc)
            acc = 0.0
    np.testing.assert_allclose(episode_returns(rewards, ends), loop, rtol=1e-12, atol=1e-12)
    assert iql_reward_scale(rewards, ends) == pytest.approx(1000.0 / (max(loop) - min(loop)))
    with pytest.raises(ValueError, match="no episode end"):
        iql_reward_scale(rewards, np.zeros_like(ends))


# ----------------------------------------------------------------------------- toy problem


def bandit(n: int, gen: torch.Generator) -> Transitions:
    """One-step contextual bandit: behaviour actions uniform in [-1, 1] (BC target: 0);
    reward 1 - (a - a*)^2 with a*(s) = 0.6 sign(s_0). Every transition is terminal."""
    obs = torch.randn(n, 3, generator=gen)
    act = torch.rand(n, 1, generator=gen) * 2 - 1
    rew = 1.0 - (act[:, 0] - 0.6 * torch.sign(obs[:, 0])) ** 2
    return Transitions(obs, act, rew, torch.randn(n, 3, generator=gen), torch.ones(n))


def train_on_bandit(agent, seed: int, steps: int = 300) -> tuple[float, list[dict]]:
    """Returns the mean of a * sign(s_0) on fresh states (0.6 = optimal, 0 = behaviour cloning)."""
    g = torch.Generator().manual_seed(seed)
    sampler = MixedSampler(bandit(4096, g), None, 0.0, 64, torch.Generator().manual_seed(seed))
    logs = [agent.update(sampler.sample()) for _ in range(steps)]
    test_obs = torch.randn(512, 3, generator=g).numpy()
    a = agent.act(test_obs)
    assert a.shape == (512, 1) and a.dtype == np.float32
    return float((a[:, 0] * np.sign(test_obs[:, 0])).mean()), logs


def fast(cfg_cls, **kw):
    """Small nets and large learning rates so a few hundred CPU updates suffice."""
    lrs = {"actor_lr": 3e-3, "critic_lr": 3e-3} if cfg_cls is TD3BCConfig else \
        {"actor_lr": 3e-3, "q_lr": 3e-3, "v_lr": 3e-3}
    return cfg_cls(hidden=32, **{**lrs, **kw})


def test_td3bc_moves_toward_better_action_and_bc_limit(seed):
    toward, logs = train_on_bandit(TD3BC(3, 1, fast(TD3BCConfig), seed=seed), seed)
    assert toward > 0.2, f"TD3+BC policy did not move toward the rewarded action ({toward:.3f})"
    for log in logs:
        assert all(math.isfinite(float(v)) for v in log.values())
    assert sum("actor_loss" in log for log in logs) == 150      # policy_freq = 2
    critic = [float(log["critic_loss"]) for log in logs]      # one-step targets are learnable
    assert np.mean(critic[-20:]) < 0.2 * np.mean(critic[:5]), (critic[:5], critic[-20:])
    # alpha = 0: pure behaviour cloning of uniform actions -> a ~ 0 everywhere.
    toward_bc, _ = train_on_bandit(TD3BC(3, 1, fast(TD3BCConfig, alpha=0.0), seed=seed), seed)
    assert abs(toward_bc) < 0.1, f"alpha=0 should clone the behaviour mean 0 ({toward_bc:.3f})"


def test_iql_moves_toward_better_action_and_bc_limit(seed):
    toward, logs = train_on_bandit(IQL(3, 1, fast(IQLConfig), seed=seed, total_steps=300), seed)
    assert toward > 0.15, f"IQL policy did not move toward the rewarded action ({toward:.3f})"
    for log in logs:
        assert all(math.isfinite(float(v)) for v in log.values())
    # beta = 0: all AWR weights are 1 -> plain (Gaussian) behaviour cloning.
    toward_bc, logs_bc = train_on_bandit(IQL(3, 1, fast(IQLConfig, beta=0.0), seed=seed,
                                              total_steps=300), seed)
    assert abs(toward_bc) < 0.1, f"beta=0 should clone the behaviour mean 0 ({toward_bc:.3f})"
    assert all(float(log["adv_weight_mean"]) == 1.0 for log in logs_bc)


def test_iql_deterministic_actor_learns(seed):
    toward, _ = train_on_bandit(IQL(3, 1, fast(IQLConfig, deterministic_actor=True), seed=seed,
                                    total_steps=300), seed)
    assert toward > 0.15, f"deterministic IQL did not improve on BC ({toward:.3f})"


# ----------------------------------------------------------------------------- hand checks


def test_td3bc_actor_loss_by_hand():
    pi = torch.tensor([[0.5], [-0.5]])
    actions = torch.zeros(2, 1)
    q = torch.tensor([2.0, -1.0], requires_grad=True)
    loss, lmbda = td3bc_actor_loss(pi, q, actions, alpha=2.5)
    # lambda = 2.5 / mean(|2|, |-1|) = 5/3; -lambda * mean(q) = -5/6; mse = 0.25.
    assert float(lmbda) == pytest.approx(5 / 3)
    assert float(loss.detach()) == pytest.approx(0.25 - 5 / 6)
    loss.backward()
    # lambda is a constant: dL/dq_i = -lambda / B (a gradient through |Q| would change this).
    torch.testing.assert_close(q.grad, torch.full((2,), -5 / 6))


def test_td3bc_bc_term_on_the_first_rows_only(seed):
    """bc_rows = n: the BC mean runs over rows [0, n) (the real rows of a MixedSampler batch);
    the Q term and lambda still use every row."""
    g = torch.Generator().manual_seed(seed)
    pi, actions = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    q = torch.randn(10, generator=g)
    loss, lmbda = td3bc_actor_loss(pi, q, actions, alpha=2.5, bc_rows=4)
    assert float(lmbda) == pytest.approx(2.5 / float(q.abs().mean()), rel=1e-6)
    want = -lmbda * q.mean() + ((pi[:4] - actions[:4]) ** 2).mean()
    torch.testing.assert_close(loss, want)
    actions[4:] += 10.0                                      # synthetic rows' actions: ignored
    torch.testing.assert_close(td3bc_actor_loss(pi, q, actions, 2.5, bc_rows=4)[0], want)
    assert float(td3bc_actor_loss(pi, q, actions, 2.5)[0]) > float(want) + 1.0


def test_td3bc_update_losses_match_hand_computation(seed):
    g = torch.Generator().manual_seed(seed)
    batch = random_transitions(16, 3, 2, g)
    # policy_freq 1 and a frozen critic (lr 0): the step-1 actor loss uses the initial nets.
    agent = TD3BC(3, 2, TD3BCConfig(hidden=16, policy_freq=1, critic_lr=0.0), seed=seed)
    before = copy.deepcopy(agent)
    noise_gen = torch.Generator().manual_seed(0)
    noise_gen.set_state(agent.noise_generator.get_state())
    log = agent.update(batch)
    with torch.no_grad():
        noise = (torch.randn(16, 2, generator=noise_gen) * 0.2).clamp(-0.5, 0.5)
        next_a = (before.actor_target(batch.next_observations) + noise).clamp(-1, 1)
        tq = torch.min(*before.critic_target(batch.next_observations, next_a))
        y = batch.rewards + (1 - batch.terminals) * 0.99 * tq
        q1, q2 = before.critic(batch.observations, batch.actions)
        critic_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
        pi = before.actor(batch.observations)
        q = before.critic.q1(torch.cat([batch.observations, pi], -1))[:, 0]
        actor_loss = -2.5 / q.abs().mean() * q.mean() + ((pi - batch.actions) ** 2).mean()
    torch.testing.assert_close(log["critic_loss"], critic_loss)
    torch.testing.assert_close(log["actor_loss"], actor_loss)
    # The target nets moved by exactly tau toward the (updated) online nets.
    for pt, p0, p in zip(agent.actor_target.parameters(), before.actor_target.parameters(),
                         agent.actor.parameters()):
        torch.testing.assert_close(pt, 0.995 * p0 + 0.005 * p)


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # weights 0.7 (diff >= 0) / 0.3 (diff < 0): (0.7*4 + 0.3*1 + 0.7*0.25 + 0.3*9) / 4
    assert float(expectile_loss(diff, 0.7)) == pytest.approx(5.975 / 4)
    assert float(expectile_loss(diff, 0.5)) == pytest.approx(0.5 * (4 + 1 + 0.25 + 9) / 4)


def test_awr_weights_clipped():
    w = awr_weights(torch.tensor([0.0, 1.0, -1.0, 10.0]), beta=3.0, max_weight=100.0)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(3), math.exp(-3), 100.0]))


def test_iql_update_losses_match_hand_computation(seed):
    g = torch.Generator().manual_seed(seed)
    batch = random_transitions(16, 3, 2, g)
    agent = IQL(3, 2, IQLConfig(hidden=16), seed=seed)
    before = copy.deepcopy(agent)
    log = agent.update(batch)
    with torch.no_grad():
        tq = torch.min(*before.q_target(batch.observations, batch.actions))
        u = tq - before.vf(batch.observations)
        v_loss = (torch.where(u < 0, 0.3, 0.7) * u ** 2).mean()
        y = batch.rewards + (1 - batch.terminals) * 0.99 * before.vf(batch.next_observations)
        q1, q2 = before.qf(batch.observations, batch.actions)
        q_loss = (((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()) / 2
        dist = before.actor(batch.observations)
        actor_loss = (torch.exp(3.0 * u).clamp(max=100)
                      * -dist.log_prob(batch.actions).sum(-1)).mean()
    torch.testing.assert_close(log["v_loss"], v_loss)
    torch.testing.assert_close(log["q_loss"], q_loss)
    torch.testing.assert_close(log["actor_loss"], actor_loss)


def test_iql_update_clips_weights_at_100(seed):
    g = torch.Generator().manual_seed(seed)
    agent = IQL(3, 2, IQLConfig(hidden=16), seed=seed)
    with torch.no_grad():   # target Q ~ 1000 >> V: every advantage is huge
        agent.q_target.q1[-1].bias.fill_(1000.0)
        agent.q_target.q2[-1].bias.fill_(1000.0)
    log = agent.update(random_transitions(32, 3, 2, g))
    assert float(log["adv_weight_mean"]) == 100.0
    assert math.isfinite(float(log["actor_loss"]))


def test_iql_config_for():
    assert (iql_config_for("hopper-medium-expert").beta,
            iql_config_for("hopper-medium-expert").expectile) == (6.0, 0.5)
    assert (iql_config_for("walker2d-medium").beta,
            iql_config_for("walker2d-medium").expectile) == (3.0, 0.7)
    assert iql_config_for("hopper-medium-expert", hidden=10).hidden == 10
    with pytest.raises(ValueError, match="unknown dataset"):
        iql_config_for("ant-medium")


def test_iql_actor_lr_cosine_decay():
    agent = IQL(2, 1, IQLConfig(hidden=8), total_steps=10)
    batch = random_transitions(8, 2, 1, torch.Generator().manual_seed(0))
    lrs = []
    for _ in range(10):
        agent.update(batch)
        lrs.append(agent.actor_optimizer.param_groups[0]["lr"])
    expected = [3e-4 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(1, 11)]
    np.testing.assert_allclose(lrs, expected, atol=1e-12)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("make", [
    lambda s: TD3BC(4, 2, TD3BCConfig(hidden=16), seed=s),
    lambda s: IQL(4, 2, IQLConfig(hidden=16), seed=s, total_steps=30),
    lambda s: IQL(4, 2, IQLConfig(hidden=16, deterministic_actor=True), seed=s, total_steps=30),
], ids=["td3bc", "iql", "iql_det"])
def test_state_dict_resume_is_bit_exact(seed, make):
    g = torch.Generator().manual_seed(seed)
    real, syn = random_transitions(300, 4, 2, g), random_transitions(200, 4, 2, g)
    mean, std = compute_obs_stats(real.observations)
    real, syn = real.normalized(mean, std), syn.normalized(mean, std)

    def sampler(s):
        return MixedSampler(real, syn, 0.25, 32, torch.Generator().manual_seed(s))

    # A: 20 uninterrupted updates.
    a, sa = make(seed), sampler(seed)
    a.set_obs_stats(mean, std)
    for _ in range(20):
        a.update(sa.sample())
    # B: 10 updates, checkpoint through bytes, then a fresh agent + sampler (other seeds) resume.
    b, sb = make(seed), sampler(seed)
    b.set_obs_stats(mean, std)
    for _ in range(10):
        b.update(sb.sample())
    buf = io.BytesIO()
    torch.save({"agent": b.state_dict(), "sampler": sb.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    c, sc = make(seed + 1), sampler(seed + 1)
    c.load_state_dict(ckpt["agent"])
    sc.load_state_dict(ckpt["sampler"])
    for _ in range(10):
        c.update(sc.sample())
    sd_a, sd_c = a.state_dict(), c.state_dict()
    sd_a.pop("config"), sd_c.pop("config")
    assert_state_equal(sd_a, sd_c)
    obs = np.random.default_rng(seed).normal(size=(5, 4))
    np.testing.assert_array_equal(a.act(obs), c.act(obs))


def test_act_uses_stored_obs_normalization(seed):
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    for agent in (TD3BC(4, 2, TD3BCConfig(hidden=8), obs_mean=mean, obs_std=std),
                  IQL(4, 2, IQLConfig(hidden=8), obs_mean=mean, obs_std=std)):
        with torch.no_grad():
            x = torch.as_tensor((obs - mean) / std)
            net = agent.actor.net
            expected = torch.tanh(net(x)).numpy()
        np.testing.assert_allclose(agent.act(obs), expected, rtol=1e-5, atol=1e-6)
        fresh = type(agent)(4, 2, agent.cfg)
        fresh.load_state_dict(agent.state_dict())     # stats travel with the checkpoint
        np.testing.assert_array_equal(fresh.act(obs), agent.act(obs))


def test_init_depends_on_seed_only():
    torch.manual_seed(0)
    a = TD3BC(3, 1, TD3BCConfig(hidden=8), seed=5)
    x = torch.rand(1)                             # global RNG untouched by building an agent
    torch.manual_seed(123)
    b = TD3BC(3, 1, TD3BCConfig(hidden=8), seed=5)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), x)
    assert_state_equal(a.actor.state_dict(), b.actor.state_dict())
    c = TD3BC(3, 1, TD3BCConfig(hidden=8), seed=6)
    assert not torch.equal(a.actor.net[0].weight, c.actor.net[0].weight)
    assert F.mse_loss(a.critic.q1[0].weight, a.critic.q2[0].weight) > 0   # independent heads
