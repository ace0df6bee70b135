"""The ops (csrc/, dawm_fast.ops): the fused guided DDIM op against the scheduler, the fast step
in the one sampling loop against the reference step, argument errors, and (with a GPU) the CUDA
implementations against the CPU ones and CUDA graph capture / replay of the loop. The extension
is built (or loaded) once per test module."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from dawm_fast.sampling import SamplingConfig, sample_windows
from dawm_fast.world_model import DDIMScheduler, DiffusionWorldModel
from dawm_fast.world_model.scheduler import DiffusionScheduleConfig

torch.set_num_threads(1)

OBS, ACT, T = 3, 2, 8
C = OBS + ACT + 1
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def ops():
    """dawm_fast.ops with the extension loaded: built at most once per test session (the JIT
    build directory is reused across processes)."""
    from dawm_fast import ops as ops_mod
    ops_mod.load_extension()
    return ops_mod


@pytest.fixture(scope="module")
def model(untrained_sampling_model) -> DiffusionWorldModel:
    return untrained_sampling_model(OBS, ACT, dim=16, dim_mults=(1, 2))


def inputs(b: int, seed: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    s0 = torch.rand(b, OBS, generator=gen) * 2 - 1
    a0 = torch.rand(b, ACT, generator=gen) * 2 - 1
    g = torch.rand(b, generator=gen)
    return s0.to(device), a0.to(device), g.to(device)


def conditioning(x, s0, a0):
    """DiffusionWorldModel.conditioning for any dims (it only reads obs_dim and act_dim)."""
    dims = SimpleNamespace(obs_dim=s0.shape[1], act_dim=a0.shape[1])
    return DiffusionWorldModel.conditioning(dims, x, s0, a0)


def reference_update(eps2, x, s0, a0, raw_noise, *, sched, i, w, temperature):
    """The sampling loop's per-step arithmetic, op for op: guidance, DDIMScheduler.step,
    conditioning (noise = temperature * randn, as the reference sampler draws it)."""
    eps_c, eps_u = eps2.chunk(2)
    eps = w * eps_c + (1.0 - w) * eps_u
    noise = temperature * raw_noise if raw_noise is not None else None
    return conditioning(sched.step(eps, i, x, noise).prev_sample, s0, a0)


# ---- the fused op on CPU ------------------------------------------------------------------------
@pytest.mark.parametrize("b,t,o,a", [(1, 4, 3, 2), (5, 8, 11, 3), (17, 32, 17, 6), (3, 1, 1, 1)])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("strided_eps", [False, True])
def test_ddim_update_matches_scheduler(ops, b, t, o, a, eta, clip, strided_eps):
    c = o + a + 1
    gen = torch.Generator().manual_seed(b * 1000 + t * 10 + o)
    sched = DDIMScheduler(DiffusionScheduleConfig(n_diffusion_steps=5, clip_sample=clip), eta=eta)
    sched.set_timesteps(3)
    w, temperature = 1.7, 0.6
    for i in range(3):
        x = 2.0 * torch.randn(b, t, c, generator=gen)       # large enough that the clip bites
        s0, a0 = torch.randn(b, o, generator=gen), torch.randn(b, a, generator=gen)
        if strided_eps:   # the U-Net's own output layout: a transpose of [2B, C, T]
            eps2 = torch.randn(2 * b, c, t, generator=gen).transpose(1, 2)
        else:
            eps2 = torch.randn(2 * b, t, c, generator=gen)
        raw = torch.randn(b, t, c, generator=gen) if eta > 0 else None
        want = reference_update(eps2, x, s0, a0, raw, sched=sched, i=i, w=w,
                                temperature=temperature)
        got = ops.ddim_guided_update(eps2, x, s0, a0, guidance_weight=w, noise=raw,
                                     noise_scale=temperature,
                                     **ops.step_kwargs(sched.step_coefficients(i)))
        assert got.shape == (b, t, c) and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_ddim_update_raw_op_and_empty_batch(ops):
    sched = DDIMScheduler(DiffusionScheduleConfig(), eta=0.0)
    sched.set_timesteps(3)
    k = ops.step_kwargs(sched.step_coefficients(0))
    x = torch.zeros(0, T, C)
    out = torch.ops.dawm_fast.ddim_guided_update(
        torch.zeros(0, T, C), x, torch.zeros(0, OBS), torch.zeros(0, ACT), None, 1.2,
        k["sqrt_recip_alpha"], k["sqrt_recipm1_alpha"], k["sqrt_alpha"],
        k["recip_sqrt_one_minus_alpha"], k["sqrt_alpha_prev"], k["dir_coef"], k["sigma"])
    assert out.shape == (0, T, C)


def test_condition_noise_matches_conditioning(ops):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, T, C, generator=gen)
    s0, a0 = torch.randn(6, OBS, generator=gen), torch.randn(6, ACT, generator=gen)
    got = ops.condition_noise(z, s0, a0, 0.5)
    torch.testing.assert_close(got, conditioning(0.5 * z, s0, a0), rtol=0, atol=0)


def test_fake_kernel_registered(ops):
    """The ops have fake (meta) kernels, so FakeTensor tracing / torch.compile can see them."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    sched = DDIMScheduler(DiffusionScheduleConfig(), eta=0.0)
    sched.set_timesteps(3)
    k = ops.step_kwargs(sched.step_coefficients(0))       # outside: it indexes a real tensor
    with FakeTensorMode():
        x = torch.empty(4, T, C)
        out = ops.ddim_guided_update(torch.empty(8, C, T).transpose(1, 2), x, torch.empty(4, OBS),
                                     torch.empty(4, ACT), guidance_weight=1.2, **k)
        z = ops.condition_noise(x, torch.empty(4, OBS), torch.empty(4, ACT), 0.5)
    assert out.shape == (4, T, C) and z.shape == (4, T, C)


def _good_args(b=3):
    gen = torch.Generator().manual_seed(0)
    return dict(eps2=torch.randn(2 * b, T, C, generator=gen), x=torch.randn(b, T, C, generator=gen),
                s0=torch.randn(b, OBS, generator=gen), a0=torch.randn(b, ACT, generator=gen),
                noise=torch.randn(b, T, C, generator=gen))


@pytest.mark.parametrize("name,bad,match", [
    ("x", lambda a: a["x"].double(), r"x must be float32"),
    ("eps2", lambda a: a["eps2"].half(), r"eps2 must be float32"),
    ("s0", lambda a: a["s0"].double(), r"s0 must be float32"),
    ("noise", lambda a: a["noise"].double(), r"noise must be float32"),
    ("eps2", lambda a: a["eps2"][:3], r"eps2 must be \[2B, T, C\]"),
    ("x", lambda a: a["x"][:, :, :-1], r"x must be contiguous"),
    ("x", lambda a: a["x"].reshape(3, -1), r"x must be a \[B, T, C\] window"),
    ("s0", lambda a: a["s0"][:2], r"s0 must be \[B, obs_dim\]"),
    ("a0", lambda a: a["a0"][:, :1].contiguous(), r"obs_dim \+ act_dim \+ 1 == C"),
    ("a0", lambda a: a["a0"].t().contiguous().t(), r"a0 must be contiguous"),
    ("noise", lambda a: a["noise"][:, :4], r"noise must have x's shape"),
    ("noise", lambda a: a["noise"].transpose(0, 1).contiguous().transpose(0, 1),
     r"noise must be contiguous"),
])
def test_ddim_update_rejects_bad_arguments(ops, name, bad, match):
    args = _good_args()
    args[name] = bad(args)
    sched = DDIMScheduler(DiffusionScheduleConfig(), eta=0.5)
    sched.set_timesteps(3)
    with pytest.raises(RuntimeError, match=match):
        ops.ddim_guided_update(args["eps2"], args["x"], args["s0"], args["a0"], noise=args["noise"],
                               guidance_weight=1.2, **ops.step_kwargs(sched.step_coefficients(0)))


def test_ddim_update_rejects_negative_clip(ops):
    a = _good_args()
    with pytest.raises(RuntimeError, match=r"clip must be >= 0"):
        ops.ddim_guided_update(a["eps2"], a["x"], a["s0"], a["a0"], guidance_weight=1.0,
                               sqrt_recip_alpha=1.0, sqrt_recipm1_alpha=0.1, sqrt_alpha=1.0,
                               recip_sqrt_one_minus_alpha=1.0, sqrt_alpha_prev=1.0, dir_coef=0.0,
                               clip=-1.0)


def test_condition_noise_rejects_bad_arguments(ops):
    s0, a0 = torch.randn(2, OBS), torch.randn(2, ACT)
    with pytest.raises(RuntimeError, match=r"z must be float32"):
        ops.condition_noise(torch.randn(2, T, C, dtype=torch.float64), s0, a0)
    with pytest.raises(RuntimeError, match=r"a0 must be \[B, act_dim\]"):
        ops.condition_noise(torch.randn(2, T, C), s0, a0[:1])


# ---- the fast step in the one loop, on CPU -------------------------------------------------------
@pytest.mark.parametrize("b", [1, 3, 17])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_fast_step_matches_reference(ops, model, b, eta):
    cfg = SamplingConfig(n_sampling_steps=3, guidance_weight=1.2, temperature=0.5, eta=eta)
    s0, a0, g = inputs(b, seed=b)
    want = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(11))
    got = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(11), backend="fast")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_step_calls_the_network_once_per_step(ops, model):
    """The loop calls the step's network once per DDIM step on the 2B batch; all DDIM steps of
    K = 5; with the plain U-Net as its network the fast step is the reference's function."""
    from dawm_fast.sampling.fast import FastStep
    from dawm_fast.sampling.loop import draw_noise, guided_loop
    seen = []

    class PlainNet(FastStep):
        def eps(self, x2, t2, returns2, actions2, mask2):
            seen.append((tuple(x2.shape), t2.tolist(), mask2.tolist()))
            return model.unet(x2, t2, returns2, actions2, mask2)

    cfg = SamplingConfig(n_sampling_steps=5, eta=0.3)
    s0, a0, g = inputs(2, seed=4)
    want = sample_windows(model, s0, a0, g, cfg, torch.Generator().manual_seed(2))
    noise = draw_noise((2, T, C), 5, 0.3, torch.Generator().manual_seed(2), s0)
    got = guided_loop(PlainNet(model, cfg), s0, a0, g, *noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [s[0] for s in seen] == [(4, T, C)] * 5
    assert [s[1][0] for s in seen] == [4, 3, 2, 1, 0]
    assert all(s[2] == [1.0, 1.0, 0.0, 0.0] for s in seen)


def test_graph_sampler_checks_its_inputs(ops):
    sampler = ops.GraphSampler()
    with pytest.raises(RuntimeError, match=r"CUDA graphs need CUDA tensors; inputs\[0\] is on cpu"):
        sampler.replay(lambda x: x, [torch.zeros(2)], "k")
    with pytest.raises(RuntimeError, match=r"needs at least one input tensor"):
        sampler.replay(lambda: None, [], "k")
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        ops.GraphSampler(0)
    assert sampler.max_graphs == 4 and len(sampler) == 0


def test_fused_parts_are_cached_per_model(ops, model):
    """One fused U-Net per model, sharing its parameters; a new U-Net object makes a new one."""
    from dawm_fast.sampling.fast import fused_parts
    m = copy.deepcopy(model)
    a = fused_parts(m)
    assert fused_parts(m) is a
    assert all(p is q for p, q in zip(a.unet.parameters(), m.unet.parameters()))
    assert type(m.unet.mid1).__name__ == "ResidualTemporalBlock"      # the model is untouched
    assert type(a.unet.mid1).__name__ == "FusedResidualBlock"
    m.unet = copy.deepcopy(m.unet)
    assert fused_parts(m) is not a


# ---- CUDA ---------------------------------------------------------------------------------------
# Whole-loop comparisons on CUDA: the same kernels run eagerly and in the graph, but cuDNN may pick
# other convolution algorithms across streams / captures, so allow the reference tolerance.
LOOP_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cuda_model(model):
    return copy.deepcopy(model).cuda()


def _cuda_run(model, b, seed, cfg, sampler=None, step_cls=None):
    """The fast step's loop on CUDA: eager without a sampler, else captured / replayed by it."""
    from dawm_fast.sampling.fast import FastStep, fused_parts
    from dawm_fast.sampling.loop import draw_noise, guided_loop
    from dawm_fast.world_model.fused_unet import refresh_banded_
    s0, a0, g = inputs(b, seed=seed, device="cuda")
    step = (step_cls or FastStep)(model, cfg)
    noise = [t for t in draw_noise((b, T, C), len(step.timesteps), cfg.eta,
                                   torch.Generator("cuda").manual_seed(seed), s0)
             if t is not None]
    with torch.no_grad():
        if sampler is None:
            return guided_loop(step, s0, a0, g, *noise)
        refresh_banded_(fused_parts(model).unet)
        return sampler.replay(lambda *t: guided_loop(step, *t), [s0, a0, g, *noise],
                              step.graph_key())


def _batch(key: str) -> int:
    """B of a graph key: its first input's (s0's) shape follows the step's constants."""
    return int(key.split(" | ")[1].split(",")[0].lstrip("["))


@needs_cuda
def test_cuda_op_matches_cpu_op(ops):
    assert ops.load_extension().with_cuda()
    sched = DDIMScheduler(DiffusionScheduleConfig(), eta=0.5)
    sched.set_timesteps(3)
    args = _good_args(b=33)
    args["eps2"] = torch.randn(66, C, T).transpose(1, 2)
    for i in range(3):
        k = dict(guidance_weight=1.2, noise_scale=0.5,
                 **ops.step_kwargs(sched.step_coefficients(i)))
        cpu = ops.ddim_guided_update(args["eps2"], args["x"], args["s0"], args["a0"],
                                     noise=args["noise"], **k)
        gpu = ops.ddim_guided_update(*(args[n].cuda() for n in ("eps2", "x", "s0", "a0")),
                                     noise=args["noise"].cuda(), **k)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-7)
    z = ops.condition_noise(args["x"].cuda(), args["s0"].cuda(), args["a0"].cuda(), 0.5)
    torch.testing.assert_close(z.cpu(), ops.condition_noise(args["x"], args["s0"], args["a0"],
                                                            0.5), rtol=0, atol=0)


@needs_cuda
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_graph_replay_matches_eager_and_reference(ops, cuda_model, eta):
    cfg = SamplingConfig(n_sampling_steps=3, guidance_weight=1.2, temperature=0.5, eta=eta)
    sampler = ops.GraphSampler(4)
    s0, a0, g = inputs(5, seed=7, device="cuda")
    want = sample_windows(cuda_model, s0, a0, g, cfg, torch.Generator("cuda").manual_seed(7))
    eager = _cuda_run(cuda_model, 5, 7, cfg)
    captured = _cuda_run(cuda_model, 5, 7, cfg, sampler=sampler)  # capture
    replayed = _cuda_run(cuda_model, 5, 7, cfg, sampler=sampler)  # replay
    assert len(sampler) == 1
    torch.testing.assert_close(eager, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured, eager, **LOOP_TOL)
    torch.testing.assert_close(replayed, eager, **LOOP_TOL)
    assert torch.equal(replayed, captured)          # one graph, same inputs: same bits
    # New inputs of the same signature: a replay of the same graph, with the new inputs.
    other = _cuda_run(cuda_model, 5, 8, cfg, sampler=sampler)
    assert len(sampler) == 1
    torch.testing.assert_close(other, _cuda_run(cuda_model, 5, 8, cfg), **LOOP_TOL)
    # The backend: graphs on CUDA.
    got = sample_windows(cuda_model, s0, a0, g, cfg, torch.Generator("cuda").manual_seed(7),
                         backend="fast")
    torch.testing.assert_close(got, eager, **LOOP_TOL)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_fast_sampling_follows_in_place_weight_updates(ops, model, device):
    """The fast backend reads cached banded matrices (on CUDA from inside a captured graph). An
    in-place weight update between two calls (an EMA update, load_state_dict) must reach the next
    call: its samples are the reference's with the new weights, not the old samples."""
    m = copy.deepcopy(model).to(device)
    cfg = SamplingConfig(n_sampling_steps=3, guidance_weight=1.2)
    s0, a0, g = inputs(5, seed=3, device=device)

    def run(backend):
        return sample_windows(m, s0, a0, g, cfg, torch.Generator(device).manual_seed(3),
                              backend=backend)

    before = run("fast")
    run("fast")                                          # on CUDA: a replay of the captured graph
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    with torch.no_grad():
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(device))
    after = run("fast")
    torch.testing.assert_close(after, run("reference"), rtol=1e-4, atol=1e-4)
    assert (after - before).abs().max() > 1e-2


@needs_cuda
def test_graph_sampler_checks_run_output(ops):
    sampler = ops.GraphSampler()
    with pytest.raises(RuntimeError, match=r"run must return a Tensor"):
        sampler.replay(lambda x: "eps", [torch.zeros(2, device="cuda")], "k")

    def boom(*a):
        raise KeyError("from run")
    with pytest.raises(KeyError, match="from run"):   # Python errors pass through unchanged
        sampler.replay(boom, [torch.zeros(2, device="cuda")], "k")
    assert len(sampler) == 0


@needs_cuda
def test_graph_recaptures_on_new_signature(ops, cuda_model):
    cfg = SamplingConfig(n_sampling_steps=3)
    sampler = ops.GraphSampler(4)
    for b in (2, 3):
        got = _cuda_run(cuda_model, b, b, cfg, sampler=sampler)
        torch.testing.assert_close(got, _cuda_run(cuda_model, b, b, cfg),
                                   **LOOP_TOL)
    assert len(sampler) == 2 and [_batch(k) for k in sampler.graph_keys()] == [3, 2]
    # A different guidance weight is baked into the kernels, so it is a new graph too.
    _cuda_run(cuda_model, 3, 3, SamplingConfig(n_sampling_steps=3, guidance_weight=2.0),
              sampler=sampler)
    assert len(sampler) == 3


@needs_cuda
def test_graph_lru_eviction(ops, cuda_model):
    cfg = SamplingConfig(n_sampling_steps=2)
    sampler = ops.GraphSampler(2)
    for b in (1, 2, 3):
        _cuda_run(cuda_model, b, b, cfg, sampler=sampler)
        assert len(sampler) <= 2
    assert [_batch(k) for k in sampler.graph_keys()] == [3, 2]
    _cuda_run(cuda_model, 2, 2, cfg, sampler=sampler)     # hit: now first
    assert [_batch(k) for k in sampler.graph_keys()] == [2, 3]
    got = _cuda_run(cuda_model, 1, 1, cfg, sampler=sampler)  # evicts B=3
    assert [_batch(k) for k in sampler.graph_keys()] == [1, 2]
    torch.testing.assert_close(got, _cuda_run(cuda_model, 1, 1, cfg),
                               **LOOP_TOL)
    sampler.clear()
    assert len(sampler) == 0


@needs_cuda
def test_graph_replays_do_not_grow_memory(ops, cuda_model):
    cfg = SamplingConfig(n_sampling_steps=3, eta=0.5)
    sampler = ops.GraphSampler(1)
    _cuda_run(cuda_model, 4, 0, cfg, sampler=sampler)        # capture
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i in range(50):
        out = _cuda_run(cuda_model, 4, i, cfg, sampler=sampler)
        del out
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert len(sampler) == 1


@needs_cuda
def test_failed_capture_leaves_cuda_usable(ops, cuda_model):
    cfg = SamplingConfig(n_sampling_steps=2)
    sampler = ops.GraphSampler(2)

    def fails_in_capture(*args):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("forward refuses to be captured")
        return cuda_model.unet(*args)

    from dawm_fast.sampling.fast import FastStep

    class FailsInCapture(FastStep):
        def eps(self, *args):
            return fails_in_capture(*args)

    with pytest.raises(RuntimeError, match="forward refuses to be captured"):
        _cuda_run(cuda_model, 2, 0, cfg, sampler=sampler, step_cls=FailsInCapture)
    assert len(sampler) == 0
    assert not torch.cuda.is_current_stream_capturing()
    got = _cuda_run(cuda_model, 2, 0, cfg, sampler=sampler)
    torch.testing.assert_close(got, _cuda_run(cuda_model, 2, 0, cfg),
                               **LOOP_TOL)


def test_error_messages_print_numbers(ops):
    """Numbers in messages come out as text (shape, float). On the GPU image, numbers formatted
    through std::ostream inside the extension segfaulted (csrc/text.h); this runs there too."""
    a = _good_args()
    with pytest.raises(RuntimeError, match=r"eps2 must be \[2B, T, C\] = \[6, 8, 6\].*got shape "
                                           r"\[3, 8, 6\]"):
        ops.ddim_guided_update(a["eps2"][:3], a["x"], a["s0"], a["a0"], guidance_weight=1.0,
                               sqrt_recip_alpha=1.0, sqrt_recipm1_alpha=0.1, sqrt_alpha=1.0,
                               recip_sqrt_one_minus_alpha=1.0, sqrt_alpha_prev=1.0, dir_coef=0.0)
    with pytest.raises(RuntimeError, match=r"clip must be >= 0 .*got -1\.5"):
        ops.ddim_guided_update(a["eps2"], a["x"], a["s0"], a["a0"], guidance_weight=1.0,
                               sqrt_recip_alpha=1.0, sqrt_recipm1_alpha=0.1, sqrt_alpha=1.0,
                               recip_sqrt_one_minus_alpha=1.0, sqrt_alpha_prev=1.0, dir_coef=0.0,
                               clip=-1.5)
