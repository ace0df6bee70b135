"""Reference world model: U-Net, DDIM scheduler, window layout / loss, trainer, EMA, IDM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dawm_fast.world_model import (EMA, DDIMScheduler, DiffusionScheduleConfig,
                                   DiffusionWorldModel, EMAConfig, InverseDynamicsConfig,
                                   TemporalUNet, TemporalUNetConfig, WorldModelConfig,
                                   WorldModelTrainer, WorldModelTrainerConfig, build_loss_mask,
                                   cosine_alphas_cumprod, ddim_timesteps, train_inverse_dynamics)

torch.set_num_threads(1)

OBS, ACT, T = 3, 2, 8
C = OBS + ACT + 1
TINY = TemporalUNetConfig(dim=16, dim_mults=(1, 2))


def tiny_model(seed: int = 0, **kw) -> DiffusionWorldModel:
    torch.manual_seed(seed)
    return DiffusionWorldModel(OBS, ACT, WorldModelConfig(horizon=T, unet=TINY, **kw))


# ---- U-Net ---------------------------------------------------------------------------------

def test_unet_output_shape_and_return_mask():
    torch.manual_seed(1)
    net = TemporalUNet(C, ACT, T, TINY)
    b = 6
    x = torch.randn(b, T, C)
    t = torch.randint(0, 5, (b,))
    acts = torch.rand(b, ACT) * 2 - 1
    g1, g2 = torch.rand(b), torch.rand(b) + 2.0
    with torch.no_grad():
        out = net(x, t, g1, acts)
        assert out.shape == (b, T, C)
        # mask 0: the return is ignored
        zeros = torch.zeros(b)
        assert torch.equal(net(x, t, g1, acts, zeros), net(x, t, g2, acts, zeros))
        assert torch.equal(net(x, t, g1, acts, False), net(x, t, g1, acts, zeros))
        # mask 1 (or None): the return matters
        assert not torch.allclose(net(x, t, g1, acts, torch.ones(b)), net(x, t, g2, acts),
                                  atol=1e-6)
        assert torch.equal(net(x, t, g1, acts, torch.ones(b)), out)
        # per-sample mask: only rows with mask 1 react to the return
        mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
        d = (net(x, t, g1, acts, mask) - net(x, t, g2, acts, mask)).abs().amax(dim=(1, 2))
        assert torch.all(d[mask == 0] == 0)
        assert torch.all(d[mask == 1] > 1e-6)
        # actions and time always matter
        assert not torch.allclose(net(x, t, g1, -acts, zeros), net(x, t, g1, acts, zeros))
        assert not torch.allclose(net(x, (t + 1) % 5, g1, acts), out)


def test_unet_full_size_parameter_count():
    with torch.device("meta"):      # no allocation: only the parameter shapes matter
        net = TemporalUNet(17 + 6 + 1, 6, 8, TemporalUNetConfig())
    n = sum(p.numel() for p in net.parameters())
    assert 30e6 < n < 100e6, n


def test_unet_rejects_bad_horizon():
    with pytest.raises(ValueError, match="divisible"):
        TemporalUNet(C, ACT, 6, TemporalUNetConfig(dim=16, dim_mults=(1, 2, 4)))


# ---- scheduler -----------------------------------------------------------------------------

def test_cosine_schedule():
    a = cosine_alphas_cumprod(5)
    f = [math.cos((u / 5 + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(6)]
    assert torch.allclose(a[:4], torch.tensor(f[1:5], dtype=torch.float64) / f[0])
    assert math.isclose(float(a[4]), float(a[3]) * (1 - 0.999))   # last beta clipped
    assert torch.all(a[1:] < a[:-1]) and torch.all(a > 0)


def test_timestep_lists():
    assert ddim_timesteps(3, 5) == [4, 2, 0]
    assert ddim_timesteps(5, 5) == [4, 3, 2, 1, 0]
    assert ddim_timesteps(1, 5) == [4]
    for k in range(2, 30):
        for n in range(2, k + 1):
            ts = ddim_timesteps(n, k)
            assert len(ts) == n and ts[0] == k - 1 and ts[-1] == 0
            assert all(a > b for a, b in zip(ts, ts[1:]))
    for bad in (0, 6):
        with pytest.raises(ValueError):
            ddim_timesteps(bad, 5)
    sch = DDIMScheduler()
    assert sch.set_timesteps(3) == [4, 2, 0] and sch.timesteps == [4, 2, 0]


def test_previous_timestep_comes_from_list():
    sch = DDIMScheduler(DiffusionScheduleConfig(n_diffusion_steps=8))
    assert sch.set_timesteps(3) == [7, 4, 0]      # uneven strides 3 and 4
    a = sch.alphas_cumprod
    c0, c1, c2 = (sch.step_coefficients(i) for i in range(3))
    assert (c0.t, c0.t_prev, c1.t, c1.t_prev, c2.t, c2.t_prev) == (7, 4, 4, 0, 0, -1)
    assert math.isclose(c0.sqrt_alpha_prev, math.sqrt(float(a[4])))
    assert math.isclose(c1.sqrt_alpha_prev, math.sqrt(float(a[0])))
    assert c2.sqrt_alpha_prev == 1.0 and c2.dir_coef == 0.0


def test_single_step_with_true_eps_recovers_x0():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, T, C, generator=gen, dtype=torch.float64) * 2 - 1     # inside clip range
    noise = torch.randn(4, T, C, generator=gen, dtype=torch.float64)
    sch = DDIMScheduler()
    sch.set_timesteps(1)                                   # one jump from K-1 straight to x0
    x_t = sch.add_noise(x0, noise, torch.full((4,), 4))
    out = sch.step(noise, 0, x_t)
    assert torch.allclose(out.pred_original_sample, x0, atol=1e-5, rtol=0)
    assert torch.allclose(out.prev_sample, x0, atol=1e-5, rtol=0)
    # every intermediate step lands exactly on q(x_prev | x0) with the same noise
    sch.set_timesteps(3)
    x_t = sch.add_noise(x0, noise, torch.full((4,), 4))
    out = sch.step(noise, 0, x_t)
    assert torch.allclose(out.prev_sample, sch.add_noise(x0, noise, torch.full((4,), 2)),
                          atol=1e-5, rtol=0)


def test_full_ddim_with_true_eps_recovers_x0():
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, T, C, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, T, C, generator=gen, dtype=torch.float64)
    sch = DDIMScheduler()
    ts = sch.set_timesteps(5)                              # N = K
    x = sch.add_noise(x0, noise, torch.full((5,), ts[0]))
    for i in range(len(ts)):
        x = sch.step(noise, i, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-5, rtol=0)


def test_clipping_and_eta_noise():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, T, C, generator=gen)
    eps = torch.randn(3, T, C, generator=gen)
    noise = torch.randn(3, T, C, generator=gen)
    det = DDIMScheduler()
    det.set_timesteps(3)
    out = det.step(eps, 0, x)
    assert out.pred_original_sample.abs().max() <= 1.0
    sto = DDIMScheduler(eta=0.7)
    sto.set_timesteps(3)
    with pytest.raises(ValueError, match="noise"):
        sto.step(eps, 0, x)
    c = sto.step_coefficients(0)
    a_t, a_p = (float(sto.alphas_cumprod[i]) for i in (4, 2))
    sigma = 0.7 * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    assert math.isclose(c.sigma, sigma)
    assert math.isclose(c.dir_coef, math.sqrt(1 - a_p - sigma ** 2))
    x0 = out.pred_original_sample
    eps_c = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    expect = math.sqrt(a_p) * x0 + c.dir_coef * eps_c + sigma * noise
    assert torch.allclose(sto.step(eps, 0, x, noise).prev_sample, expect, atol=1e-5)
    assert sto.step_coefficients(2).sigma == 0.0          # nothing to add after the last step


# ---- window layout and loss ----------------------------------------------------------------

def test_loss_mask_channels():
    m = build_loss_mask(T, OBS, ACT)
    expect = torch.zeros(T, C)
    expect[0, OBS + ACT] = 1                               # r_0
    for i in range(1, T):
        expect[i, :OBS] = 1                                # s_i
        expect[i, OBS + ACT] = 1                           # r_i
    assert torch.equal(m, expect)
    assert torch.equal(tiny_model().loss_mask, expect)


def test_conditioning_writes_step0_and_zeros_future_actions():
    model = tiny_model()
    x = torch.randn(4, T, C)
    s0, a0 = torch.randn(4, OBS), torch.randn(4, ACT)
    before = x.clone()
    y = model.conditioning(x, s0, a0)
    assert torch.equal(x, before)                          # out of place
    assert torch.equal(y[:, 0, :OBS], s0) and torch.equal(y[:, 0, OBS:OBS + ACT], a0)
    assert torch.all(y[:, 1:, OBS:OBS + ACT] == 0)
    assert torch.equal(y[:, 1:, :OBS], x[:, 1:, :OBS])
    assert torch.equal(y[:, :, -1], x[:, :, -1])


def test_loss_only_sees_masked_channels():
    model = tiny_model()
    x0 = torch.rand(8, T, C) * 2 - 1
    g, a0 = torch.rand(8), x0[:, 0, OBS:OBS + ACT].clone()

    def loss(x):
        return model.loss(x, g, a0, torch.Generator().manual_seed(5)).item()

    base = loss(x0)
    other = x0.clone()
    other[:, 1:, OBS:OBS + ACT] = torch.rand(8, T - 1, ACT)   # future actions: not modelled
    assert loss(other) == base
    moved = x0.clone()
    moved[:, 3, 0] += 0.5                                      # a future state: modelled
    assert loss(moved) != base


# ---- training, EMA, resume -----------------------------------------------------------------

def toy_batch(gen: torch.Generator, b: int = 64):
    """Windows with a learnable structure: s_i = 0.8^i s_0 + 0.1 i a0[0], r_i = mean(s_i)."""
    s0 = torch.rand(b, OBS, generator=gen) * 2 - 1
    a0 = torch.rand(b, ACT, generator=gen) * 2 - 1
    x0 = torch.zeros(b, T, C)
    for i in range(T):
        s = s0 * 0.8 ** i + 0.1 * i * a0[:, :1]
        x0[:, i, :OBS] = s.clamp(-1, 1)
        x0[:, i, -1] = s.mean(dim=1)
    x0[:, 0, OBS:OBS + ACT] = a0
    returns = x0[:, :, -1].sum(dim=1) / T
    return {"x0": x0, "returns": returns, "actions": a0}


def test_training_lowers_loss():
    model = tiny_model(seed=6)
    trainer = WorldModelTrainer(model, WorldModelTrainerConfig(lr=2e-3, grad_clip_norm=1.0))
    gen = torch.Generator().manual_seed(7)
    losses = [trainer.train_step(toy_batch(gen, 32))["loss"] for _ in range(200)]
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.5 * first, (first, last)
    assert trainer.step == 200


def test_resume_is_bit_identical():
    cfg = WorldModelTrainerConfig(lr=1e-3, grad_clip_norm=1.0,
                                  ema=EMAConfig(decay=0.9, update_every=3, start_step=6))
    gen = torch.Generator().manual_seed(8)
    batches = [toy_batch(gen, 16) for _ in range(20)]

    straight = WorldModelTrainer(tiny_model(seed=9), cfg)
    straight_losses = [straight.train_step(b)["loss"] for b in batches]

    first = WorldModelTrainer(tiny_model(seed=9), cfg)
    for b in batches[:10]:
        first.train_step(b)
    ckpt = first.state_dict()
    resumed = WorldModelTrainer(tiny_model(seed=123), cfg)     # different init, overwritten
    resumed.load_state_dict(ckpt)
    resumed_losses = [resumed.train_step(b)["loss"] for b in batches[10:]]

    assert resumed_losses == straight_losses[10:]
    assert resumed.step == straight.step == 20
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(straight.ema.model.parameters(), resumed.ema.model.parameters()):
        assert torch.equal(pa, pb)
    # EMA really averaged (steps 6..18 updates), so it differs from the online weights
    assert any(not torch.equal(pa, pb)
               for pa, pb in zip(straight.ema.model.parameters(), straight.model.parameters()))


def test_ema_warmup_copies_then_averages():
    online = torch.nn.Linear(3, 2)
    ema = EMA(online, EMAConfig(decay=0.5, update_every=2, start_step=4))
    with torch.no_grad():
        online.weight.fill_(1.0)
    ema.update(online, 1)                                  # not a multiple of update_every
    assert not torch.equal(ema.model.weight, online.weight)
    ema.update(online, 2)                                  # warm-up: copy
    assert torch.equal(ema.model.weight, online.weight)
    with torch.no_grad():
        online.weight.fill_(3.0)
    ema.update(online, 4)                                  # average: 0.5 * 1 + 0.5 * 3
    assert torch.allclose(ema.model.weight, torch.full_like(online.weight, 2.0))
    copy_ = EMA(torch.nn.Linear(3, 2))
    copy_.load_state_dict(ema.state_dict())
    assert torch.equal(copy_.model.weight, ema.model.weight)


# ---- inverse dynamics ----------------------------------------------------------------------

def test_idm_learns_linear_map():
    rng = np.random.default_rng(10)
    n, o, a = 2000, 4, 2
    obs = rng.uniform(-1, 1, (n, o)).astype(np.float32)
    acts = rng.uniform(-0.8, 0.8, (n, a)).astype(np.float32)
    A = rng.normal(size=(o, o)).astype(np.float32) * 0.3
    B = rng.normal(size=(a, o)).astype(np.float32)
    nxt = obs @ A + acts @ B                               # a = linear function of (s, s')
    cfg = InverseDynamicsConfig(hidden=64, n_steps=600, lr=3e-3, batch_size=128)
    model, rep = train_inverse_dynamics(obs, nxt, acts, cfg, seed=0)
    assert rep.n_heldout == 100 and rep.n_train == 1900
    assert rep.heldout_mse < 0.05 * rep.heldout_action_var, rep
    with torch.no_grad():
        pred = model(torch.as_tensor(obs[:5]), torch.as_tensor(nxt[:5]))
    assert pred.shape == (5, a) and pred.abs().max() <= 1.0
