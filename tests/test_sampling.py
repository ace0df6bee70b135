"""Sampling entry point: guided DDIM windows and synthetic transitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dawm_fast.data.tasks import EnvFamily, env_family
from dawm_fast.sampling import (SamplingConfig, available_backends, failed_health_checks,
                                generate_transitions, healthy, register_backend, sample_windows)
from dawm_fast.sampling import generate as generate_mod
from dawm_fast.world_model import (DDIMScheduler, DiffusionWorldModel, InverseDynamics,
                                   InverseDynamicsConfig)

torch.set_num_threads(1)

OBS, ACT, T = 3, 2, 8
C = OBS + ACT + 1


@pytest.fixture(scope="module")
def model(untrained_sampling_model) -> DiffusionWorldModel:
    return untrained_sampling_model(OBS, ACT, dim=16, dim_mults=(1, 2))


@pytest.fixture(scope="module")
def idm() -> InverseDynamics:
    torch.manual_seed(1)
    return InverseDynamics(OBS, ACT, InverseDynamicsConfig(hidden=16)).eval()


def inputs(b: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    s0 = torch.rand(b, OBS, generator=gen) * 2 - 1
    a0 = torch.rand(b, ACT, generator=gen) * 2 - 1
    g = torch.rand(b, generator=gen)
    return s0, a0, g


def manual_sample(model, s0, a0, g, cfg: SamplingConfig, seed: int, single_forward: bool):
    """Independent loop: separate forwards per branch (or one conditional forward)."""
    gen = torch.Generator().manual_seed(seed)
    b = s0.shape[0]
    sch = DDIMScheduler(model.schedule_config, eta=cfg.eta)
    x = cfg.temperature * torch.randn(b, T, C, generator=gen)
    x = model.conditioning(x, s0, a0)
    with torch.no_grad():
        for i, t in enumerate(sch.set_timesteps(cfg.n_sampling_steps)):
            tt = torch.full((b,), t, dtype=torch.long)
            if single_forward:
                eps = model.unet(x, tt, g, a0)
            else:
                eps_c = model.unet(x, tt, g, a0, torch.ones(b))
                eps_u = model.unet(x, tt, g, a0, torch.zeros(b))
                eps = cfg.guidance_weight * eps_c + (1 - cfg.guidance_weight) * eps_u
            noise = cfg.temperature * torch.randn(b, T, C, generator=gen) if cfg.eta > 0 else None
            x = model.conditioning(sch.step(eps, i, x, noise).prev_sample, s0, a0)
    return x


def test_same_seed_same_samples_and_conditioning_present(model):
    s0, a0, g = inputs(16, seed=2)
    cfg = SamplingConfig()
    x1 = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(3))
    x2 = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(3))
    x3 = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(4))
    assert x1.shape == (16, T, C)
    assert torch.equal(x1, x2)
    assert not torch.allclose(x1, x3)
    assert torch.equal(x1[:, 0, :OBS], s0) and torch.equal(x1[:, 0, OBS:OBS + ACT], a0)
    assert torch.all(x1[:, 1:, OBS:OBS + ACT] == 0)
    assert x1.abs().max() <= 1.0                           # last step returns the clipped x0


def test_guidance_weight_one_is_the_conditional_sample(model):
    s0, a0, g = inputs(8, seed=5)
    cfg = SamplingConfig(guidance_weight=1.0)
    got = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(6))
    want = manual_sample(model, s0, a0, g, cfg, seed=6, single_forward=True)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("w, eta, steps", [(1.2, 0.0, 3), (2.0, 0.0, 5), (1.2, 0.5, 3)])
def test_guided_sample_matches_direct_loop(model, w, eta, steps):
    s0, a0, g = inputs(8, seed=7)
    cfg = SamplingConfig(guidance_weight=w, eta=eta, n_sampling_steps=steps)
    got = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(8))
    want = manual_sample(model, s0, a0, g, cfg, seed=8, single_forward=False)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    if w != 1.0:   # the guidance really changes the sample
        plain = manual_sample(model, s0, a0, g, SamplingConfig(guidance_weight=1.0, eta=eta,
                                                               n_sampling_steps=steps),
                              seed=8, single_forward=True)
        assert not torch.allclose(got, plain, atol=1e-4)


def test_backend_dispatch(model):
    s0, a0, g = inputs(2, seed=9)
    with pytest.raises(ValueError, match="reference"):
        sample_windows(model, s0, a0, g, SamplingConfig(), torch.Generator(), backend="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_backend("reference", lambda *a: None)
    calls = []

    def fake(m, s, a, r, cfg, gen):
        calls.append(s.shape)
        return torch.zeros(s.shape[0], T, C)

    register_backend("test-fake", fake)
    try:
        assert "test-fake" in available_backends()
        out = sample_windows(model, s0, a0, g, SamplingConfig(), torch.Generator(),
                             backend="test-fake")
        assert calls == [(2, OBS)] and torch.equal(out, torch.zeros(2, T, C))
    finally:
        del generate_mod._BACKENDS["test-fake"]


def fake_family(**bounds) -> EnvFamily:
    return EnvFamily("toy", "Toy-v5", "Toy-v4", OBS, ACT, 100.0, 0.0, 1.0, **bounds)


def unnorm_states(s: torch.Tensor) -> torch.Tensor:
    return 2.0 * s + 1.0


def unnorm_rewards(r: torch.Tensor) -> torch.Tensor:
    return 10.0 * r - 3.0


def expected_transitions(model, idm, s0, a0, g, family, cfg, seed, next_states=None):
    """Python-loop reference of generate_transitions from the same window samples."""
    gen = torch.Generator().manual_seed(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                            "terminals")}
    errs, step_errs, clipped, dropped = [], [], [], 0
    for lo in range(0, s0.shape[0], cfg.batch_size):
        sl = slice(lo, lo + cfg.batch_size)
        x = sample_windows(model, s0[sl], a0[sl], g[sl], cfg, gen)
        with torch.no_grad():
            for w in range(x.shape[0]):
                s = x[w, :, :OBS]
                errs.append(((idm(s[:1], s[1:2])[0] - a0[sl][w]) ** 2).numpy())
                if next_states is not None:
                    step_errs.append(((s[1] - next_states[lo + w]) ** 2).numpy())
                clipped.append((s[1:].abs() >= 1.0 - 1e-6).numpy())
                # the steps this window keeps, by the rules in generate_transitions' docstring
                for i in range(T - 1):
                    act = a0[sl][w] if i == 0 else idm(s[i:i + 1], s[i + 1:i + 2])[0]
                    nxt = unnorm_states(s[i + 1])
                    failed = failed_health_checks(family, nxt[None])[0]
                    done = bool(failed.any())
                    off_bound = s[i + 1].abs() < 1.0 - 1e-6
                    if done and cfg.drop_clipped_terminals and not bool((failed & off_bound).any()):
                        dropped += 1               # a fall only the clip made: cut here
                        break
                    rows["observations"].append(unnorm_states(s[i]).numpy())
                    rows["actions"].append(act.numpy())
                    rows["rewards"].append(float(unnorm_rewards(x[w, i, -1])))
                    rows["next_observations"].append(nxt.numpy())
                    rows["terminals"].append(float(done))
                    if done:
                        break
    out = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
    out["action_consistency"] = float(np.mean(errs))
    out["one_step_state_mse"] = float(np.mean(step_errs)) if step_errs else float("nan")
    out["clipped_fraction"] = float(np.mean(clipped))
    out["dropped_clipped_terminals"] = dropped
    return out


def check_against_reference(got, want):
    assert set(got) == set(want)
    for k in ("observations", "actions", "rewards", "next_observations", "terminals"):
        assert got[k].dtype == np.float32, k
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)
    assert got["dropped_clipped_terminals"] == want["dropped_clipped_terminals"]
    for k in ("action_consistency", "one_step_state_mse", "clipped_fraction"):
        assert math.isclose(got[k], want[k], rel_tol=1e-4) or (math.isnan(got[k])
                                                               and math.isnan(want[k])), k


def test_generate_transitions_layout(model, idm):
    n = 10
    s0, a0, g = inputs(n, seed=10)
    fam = fake_family()                                    # never terminates
    cfg = SamplingConfig(batch_size=4)                     # chunks of 4, 4, 2
    s1 = torch.rand(n, OBS, generator=torch.Generator().manual_seed(12)) * 2 - 1
    got = generate_transitions(model, idm, s0, a0, g, fam, unnorm_states, unnorm_rewards, cfg,
                               torch.Generator().manual_seed(11), next_states=s1)
    assert got["observations"].shape == (n * (T - 1), OBS)
    assert got["actions"].shape == (n * (T - 1), ACT)
    assert got["rewards"].shape == got["terminals"].shape == (n * (T - 1),)
    assert not got["terminals"].any()
    per_win = {k: got[k].reshape(n, T - 1, -1) for k in ("observations", "actions",
                                                         "next_observations")}
    # first transition: the real (s_t, a_t); windows chain s_{i+1} -> next obs
    np.testing.assert_allclose(per_win["observations"][:, 0], unnorm_states(s0).numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(per_win["actions"][:, 0], a0.numpy())
    np.testing.assert_array_equal(per_win["observations"][:, 1:],
                                  per_win["next_observations"][:, :-1])
    want = expected_transitions(model, idm, s0, a0, g, fam, cfg, seed=11, next_states=s1)
    check_against_reference(got, want)
    assert 0.0 < got["one_step_state_mse"] < 4.0


def test_first_reward_is_the_datasets(model, idm):
    """Step 0 of each window is the real (s_t, a_t): with cfg.real_first_reward (the default) its
    reward is the dataset's r_t given as first_rewards; every other value is unchanged, and
    without the option the generated reward stays."""
    n = 6
    s0, a0, g = inputs(n, seed=20)
    fam = fake_family()
    real_r = torch.randn(n, generator=torch.Generator().manual_seed(int(torch.randint(1 << 30, ()))))
    run = lambda cfg, **kw: generate_transitions(model, idm, s0, a0, g, fam, unnorm_states,
                                                 unnorm_rewards, cfg,
                                                 torch.Generator().manual_seed(21), **kw)
    got = run(SamplingConfig(batch_size=4), first_rewards=real_r)
    generated = run(SamplingConfig(batch_size=4, real_first_reward=False), first_rewards=real_r)
    rewards = got["rewards"].reshape(n, T - 1)
    np.testing.assert_array_equal(rewards[:, 0], real_r.numpy())
    np.testing.assert_array_equal(rewards[:, 1:], generated["rewards"].reshape(n, T - 1)[:, 1:])
    assert not np.allclose(generated["rewards"].reshape(n, T - 1)[:, 0], real_r.numpy())
    for k in ("observations", "actions", "next_observations", "terminals"):
        np.testing.assert_array_equal(got[k], generated[k])
    with pytest.raises(ValueError, match="first_rewards has 5 entries for 6 starts"):
        run(SamplingConfig(), first_rewards=real_r[:5])


def test_generate_transitions_truncates_at_termination(model, idm):
    n = 48
    s0, a0, g = inputs(n, seed=12)
    # raw z = 2 * s + 1 must stay above 0 (normalized z > -0.5); the low temperature keeps the
    # untrained model's samples off the clip bounds, so some windows break it and some do not
    fam = fake_family(healthy_z=(0.0, float("inf")))
    cfg = SamplingConfig(temperature=0.002, batch_size=32)
    got = generate_transitions(model, idm, s0, a0, g, fam, unnorm_states, unnorm_rewards, cfg,
                               torch.Generator().manual_seed(13))
    want = expected_transitions(model, idm, s0, a0, g, fam, cfg, seed=13)
    n_term = int(want["terminals"].sum())
    # the seed gives both truncated and full windows
    assert 0 < n_term < n and len(want["terminals"]) < n * (T - 1)
    assert (n - n_term) * (T - 1) < len(want["terminals"])
    check_against_reference(got, want)
    # a terminal transition is always the last of its window: the next row restarts at an s_t
    term_rows = np.flatnonzero(got["terminals"])
    starts = {tuple(r) for r in unnorm_states(s0).numpy().round(5)}
    for r in term_rows[term_rows + 1 < len(got["terminals"])]:
        assert tuple(got["observations"][r + 1].round(5)) in starts
    assert np.all(got["next_observations"][term_rows, 0] <= 0.0)


@pytest.mark.parametrize("drop", [True, False])
def test_falls_made_by_the_clip_are_dropped(model, idm, drop):
    """Windows with known values (a stand-in backend): a next state that is unhealthy only at the
    clip bound (normalized z = -1) is dropped with the rest of its window; one whose failing value
    is off the bound stays a terminal, even with an unchecked value at the bound; a clipped but
    healthy one stays an ordinary step."""
    fam = fake_family(healthy_z=(0.0, float("inf")))      # raw z = 2 s + 1 > 0: s_z > -0.5
    s0, a0, g = inputs(3, seed=20)

    def windows(m, s, a, r, cfg, gen):
        x = torch.zeros(3, T, C)
        x[:, 0, :OBS], x[:, 0, OBS:OBS + ACT] = s, a
        x[0, 2, 0] = -1.0                 # window 0: s_2 at the clip bound and unhealthy
        x[1, 2, 0] = -0.7                 # window 1: s_2 unhealthy inside the range,
        x[1, 2, 1] = 1.0                  # with an unchecked value at the bound
        x[2, 3, 1] = 1.0                  # window 2: s_3 clipped in another dim, healthy
        return x

    register_backend("test-windows", windows)
    try:
        got = generate_transitions(
            model, idm, s0, a0, g, fam, unnorm_states, unnorm_rewards,
            SamplingConfig(drop_clipped_terminals=drop), torch.Generator(),
            backend="test-windows")
    finally:
        del generate_mod._BACKENDS["test-windows"]
    # rows per window: 0 -> 1 step (or 2, the second terminal, without dropping); 1 -> 2 steps,
    # the second terminal; 2 -> all T - 1 steps
    first = 1 if drop else 2
    assert len(got["terminals"]) == first + 2 + (T - 1)
    assert got["terminals"].tolist() == ([0.0] if drop else [0.0, 1.0]) + [0.0, 1.0] + \
        [0.0] * (T - 1)
    assert got["dropped_clipped_terminals"] == (1 if drop else 0)


def test_health_rules_follow_gymnasium_v5():
    hopper, walker, cheetah = (env_family(e) for e in ("hopper", "walker2d", "halfcheetah"))
    h = torch.zeros(5, hopper.obs_dim)
    h[:, 0] = 1.25
    h[1, 0] = 0.7                      # z not strictly above 0.7
    h[2, 1] = 0.25                     # angle outside (-0.2, 0.2)
    h[3, 5] = 150.0                    # a velocity outside (-100, 100)
    h[4, 0] = 150.0                    # z is not under the |state[1:]| bound: still healthy
    assert healthy(hopper, h).tolist() == [True, False, False, False, True]
    # which values fail: hopper's angle is checked twice (its own bound, the state bound)
    assert failed_health_checks(hopper, h).nonzero().tolist() == [[1, 0], [2, 1], [3, 5]]
    w = torch.zeros(5, walker.obs_dim)
    w[:, 0] = 1.25
    w[1, 0] = 2.1                      # z above 2.0
    w[2, 0] = 0.75                     # z below 0.8
    w[3, 1] = -1.1                     # angle below -1
    w[4, 5] = 1e4                      # walker has no state bound
    assert healthy(walker, w).tolist() == [True, False, False, False, True]
    c = torch.randn(4, cheetah.obs_dim) * 100
    assert healthy(cheetah, c).all()
