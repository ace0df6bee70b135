"""Fused Triton kernels (the ops' CUDA implementations) vs their plain-PyTorch references, the
U-Net with fused blocks vs TemporalUNet.forward, and the "fast" sampling backend vs the reference.

On a CPU machine the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports them); it executes every program in Python, so the
shapes here are small and each kernel launch has few programs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1 (set by conftest.py on "
                "machines without an NVIDIA driver)", allow_module_level=True)

import dawm_fast.kernels as kernels  # noqa: E402
from dawm_fast.sampling import SamplingConfig, sample_windows  # noqa: E402
from dawm_fast.world_model import (DDIMScheduler, DiffusionScheduleConfig,  # noqa: E402
                                   DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig)
from dawm_fast.world_model.fused_unet import fused_copy  # noqa: E402
from dawm_fast.kernels.ddim_update import (condition_noise, ddim_update,  # noqa: E402
                                 ddim_update_reference)
from dawm_fast.kernels.groupnorm_mish import (groupnorm_mish_backward,  # noqa: E402
                                              groupnorm_mish_forward, groupnorm_mish_reference)

torch.set_num_threads(1)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OBS, ACT, T = 4, 3, 8
C = OBS + ACT + 1


def randn(*shape, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen)).to(DEV)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ---- groupnorm_mish ----------------------------------------------------------------------------
EPILOGUE_CASES = [   # (B, C, G, T, emb_add, residual)
    (2, 24, 8, 8, True, False),      # 3 channels per group
    (1, 40, 8, 4, False, True),      # 5 channels per group, batch 1
    (3, 40, 8, 2, True, True),
    (1, 16, 8, 8, False, False),
    (2, 6, 2, 3, True, True),        # T not a power of two
    (2, 128, 8, 8, True, False),     # default U-Net, top level
    (1, 512, 8, 4, False, True),     # default U-Net, middle level
    (2, 1024, 8, 2, True, False),    # default U-Net, largest block
    (1, 1024, 8, 2, False, True),
]


@pytest.mark.parametrize("b,c,g,t,with_emb,with_res", EPILOGUE_CASES)
def test_groupnorm_mish_matches_reference(b, c, g, t, with_emb, with_res):
    gen = torch.Generator().manual_seed(b * 1000 + c + t)
    x = randn(b, c, t, gen=gen, scale=3.0)
    bias, gamma, beta = randn(c, gen=gen), 1 + randn(c, gen=gen, scale=0.5), randn(c, gen=gen)
    emb = randn(b, c, gen=gen) if with_emb else None
    res = randn(b, c, t, gen=gen) if with_res else None
    out = torch.full((b, c, t), float("nan"), device=DEV)
    got = groupnorm_mish_forward(x, bias, gamma, beta, g, 1e-5, emb, res, out=out)
    assert got is out
    assert_close(out, groupnorm_mish_reference(x, bias, gamma, beta, g, 1e-5, emb, res))


def test_groupnorm_mish_extreme_inputs_follow_torch_mish():
    """GroupNorm output spanning [-100, 100] exercises both Mish guards (exp overflow, z > 20)."""
    gen = torch.Generator().manual_seed(7)
    b, c, g, t = 2, 16, 4, 4
    x = randn(b, c, t, gen=gen)
    gamma = torch.linspace(-60, 60, c).to(DEV)
    beta = torch.linspace(-40, 40, c).to(DEV)
    bias = torch.zeros(c, device=DEV)
    out = torch.full((b, c, t), float("nan"), device=DEV)
    groupnorm_mish_forward(x, bias, gamma, beta, g, out=out)
    assert torch.isfinite(out).all()
    assert_close(out, groupnorm_mish_reference(x, bias, gamma, beta, g))


def test_groupnorm_mish_rejects_bad_shapes():
    x = torch.zeros(1, 12, 4, device=DEV)
    p = torch.zeros(12, device=DEV)
    with pytest.raises(ValueError, match="divisible"):
        groupnorm_mish_forward(x, p, p, p, 8)
    with pytest.raises(ValueError, match="out must be"):
        groupnorm_mish_forward(x, p, p, p, 4, out=torch.empty(1, 12, 5, device=DEV))
    big = torch.zeros(1, 8, 4096, device=DEV)
    with pytest.raises(ValueError, match="one-tile limit"):
        groupnorm_mish_forward(big, p[:8], p[:8], p[:8], 1)


@pytest.mark.parametrize("b,c,g,t,with_emb,with_res", [
    (2, 24, 8, 8, True, True), (1, 40, 8, 4, False, False), (3, 6, 2, 3, True, False),
    (1, 64, 8, 2, False, True)])
def test_groupnorm_mish_backward_matches_autograd(b, c, g, t, with_emb, with_res):
    gen = torch.Generator().manual_seed(c + t)
    x = randn(b, c, t, gen=gen, scale=2.0)
    params = [randn(c, gen=gen), 1 + randn(c, gen=gen, scale=0.5), randn(c, gen=gen)]
    emb = randn(b, c, gen=gen) if with_emb else None
    res = randn(b, c, t, gen=gen) if with_res else None
    dy = randn(b, c, t, gen=gen)
    leaves = [v.detach().clone().requires_grad_(True) for v in (x, *params)]
    y = groupnorm_mish_reference(*leaves, g, 1e-5, emb_add=emb, residual=res)
    want = torch.autograd.grad(y, leaves, dy)
    got = groupnorm_mish_backward(dy, x, *params, g, 1e-5)    # the adds' grads are plain
    for gt, w in zip(got, want):
        assert_close(gt, w, rtol=1e-4, atol=1e-5)


def test_groupnorm_mish_op_autograd_with_the_triton_backward():
    """The op's registered autograd (dawm_fast/ops/registrations.py), its backward the Triton
    launcher: on a CPU the forward is the C++ kernel and the Triton backward is registered for
    CPU tensors for this test only (under the interpreter); on CUDA both are Triton."""
    from dawm_fast import ops
    from dawm_fast.ops import registrations
    if not ops.has_ops():
        pytest.skip("the dawm_fast C++ extension is unavailable")
    lib = None
    if DEV.type == "cpu":
        lib = torch.library.Library("dawm_fast", "IMPL")
        torch.library.register_kernel("dawm_fast::groupnorm_mish_backward", "cpu",
                                      registrations._groupnorm_mish_backward_cuda, lib=lib)
    try:
        gen = torch.Generator().manual_seed(21)
        b, c, g, t = 2, 24, 8, 4
        leaves = [randn(b, c, t, gen=gen, scale=2.0), randn(c, gen=gen),
                  1 + randn(c, gen=gen, scale=0.5), randn(c, gen=gen), randn(b, c, gen=gen),
                  randn(b, c, t, gen=gen)]
        dy = randn(b, c, t, gen=gen)

        def grads(fn):
            xs = [v.detach().clone().requires_grad_(True) for v in leaves]
            y = fn(*xs[:4], g, 1e-5, xs[4], xs[5])
            return y, torch.autograd.grad(y, xs, dy)

        y, got = grads(ops.groupnorm_mish)
        y_ref, want = grads(groupnorm_mish_reference)
        assert_close(y, y_ref)
        for gt, w in zip(got, want):
            assert_close(gt, w, rtol=1e-4, atol=1e-5)
    finally:
        if lib is not None:
            lib._destroy()


# ---- ddim_update -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model() -> DiffusionWorldModel:
    torch.manual_seed(0)
    return DiffusionWorldModel(OBS, ACT, WorldModelConfig(
        horizon=T, unet=TemporalUNetConfig(dim=8, dim_mults=(1, 2), n_groups=2))).to(DEV).eval()


def step_args(sched: DDIMScheduler, i: int) -> dict:
    c = sched.step_coefficients(i)
    return dict(sqrt_recip_alpha=c.sqrt_recip_alpha, sqrt_recipm1_alpha=c.sqrt_recipm1_alpha,
                sqrt_alpha=c.sqrt_alpha, recip_sqrt_one_minus_alpha=c.recip_sqrt_one_minus_alpha,
                sqrt_alpha_prev=c.sqrt_alpha_prev, dir_coef=c.dir_coef, sigma=c.sigma,
                clip=c.clip)


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_ddim_update_matches_scheduler_step(tiny_model, b, eta, clip_sample):
    w, temp = 1.2, 0.5
    sched = DDIMScheduler(DiffusionScheduleConfig(n_diffusion_steps=5, clip_sample=clip_sample),
                          eta=eta)
    sched.set_timesteps(3)
    gen = torch.Generator().manual_seed(b + int(10 * eta))
    s0, a0 = randn(b, OBS, gen=gen), randn(b, ACT, gen=gen)
    for i in range(3):
        x = randn(b, T, C, gen=gen)
        eps2 = randn(2 * b, T, C, gen=gen, scale=2.0)       # wide enough that clipping bites
        if i == 1:   # the U-Net's own output: a contiguous [2B, C, T] seen as [2B, T, C]
            eps2 = eps2.transpose(1, 2).contiguous().transpose(1, 2)
        z = randn(b, T, C, gen=gen) if eta > 0 else None
        eps_c, eps_u = eps2.chunk(2)
        eps = w * eps_c + (1.0 - w) * eps_u
        noise = temp * z if z is not None else None
        want = tiny_model.conditioning(sched.step(eps, i, x, noise).prev_sample, s0, a0)

        out = torch.full((b, T, C), float("nan"), device=DEV)
        args = dict(guidance_weight=w, noise=z, noise_scale=temp, **step_args(sched, i))
        assert ddim_update(eps2, x, s0, a0, out=out, **args) is out
        assert_close(out, want, rtol=1e-5, atol=1e-6)
        # the CPU path's reference is the scheduler's arithmetic op for op
        assert torch.equal(ddim_update_reference(eps2, x, s0, a0, **args), want)


@pytest.mark.parametrize("eta,clip_sample", [(0.0, True), (0.7, False)])
def test_ddim_op_cuda_implementation_matches_cpu_kernel(eta, clip_sample):
    """The ops' CUDA implementations (the Triton launchers behind the op's schema, as registered
    in dawm_fast/ops/registrations.py) called with the op's arguments equal its C++ CPU kernel
    (on a CPU: the launchers under the interpreter)."""
    from dawm_fast import ops
    from dawm_fast.ops import registrations
    if not ops.has_ops():
        pytest.skip("the dawm_fast C++ extension is unavailable")
    sched = DDIMScheduler(DiffusionScheduleConfig(clip_sample=clip_sample), eta=eta)
    sched.set_timesteps(3)
    gen = torch.Generator().manual_seed(int(eta * 10))
    b = 3
    x, z = randn(b, T, C, gen=gen, scale=2.0), randn(b, T, C, gen=gen)
    s0, a0 = randn(b, OBS, gen=gen), randn(b, ACT, gen=gen)
    eps2 = randn(2 * b, C, T, gen=gen, scale=2.0).transpose(1, 2)
    k = ops.step_kwargs(sched.step_coefficients(1))
    args = (eps2, x, s0, a0, z if eta > 0 else None, 1.2, k["sqrt_recip_alpha"],
            k["sqrt_recipm1_alpha"], k["sqrt_alpha"], k["recip_sqrt_one_minus_alpha"],
            k["sqrt_alpha_prev"], k["dir_coef"], k["sigma"], k["clip"], 0.5)
    cpu = torch.ops.dawm_fast.ddim_guided_update(*(a.cpu() if torch.is_tensor(a) else a
                                                   for a in args))
    assert_close(registrations._ddim_guided_update_cuda(*args).cpu(), cpu, rtol=1e-6, atol=1e-7)
    assert torch.equal(registrations._condition_noise_cuda(z, s0, a0, 0.5).cpu(),
                       torch.ops.dawm_fast.condition_noise(z.cpu(), s0.cpu(), a0.cpu(), 0.5))


def test_condition_noise_matches_model_conditioning(tiny_model):
    gen = torch.Generator().manual_seed(5)
    b = 3
    z, s0, a0 = randn(b, T, C, gen=gen), randn(b, OBS, gen=gen), randn(b, ACT, gen=gen)
    out = torch.full((b, T, C), float("nan"), device=DEV)
    condition_noise(z, s0, a0, 0.5, out=out)
    assert torch.equal(out, tiny_model.conditioning(0.5 * z, s0, a0))


# ---- fused U-Net forward -----------------------------------------------------------------------
def unet_inputs(unet, b: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = randn(b, unet.horizon, unet.transition_dim, gen=gen)
    t = torch.randint(0, 5, (b,), generator=gen).to(DEV)
    returns, actions = randn(b, gen=gen), randn(b, unet.act_dim, gen=gen)
    mask = (torch.arange(b) % 2).float().to(DEV)
    return x, t, returns, actions, mask


def test_fused_blocks_match_module_small(tiny_model):
    unet = tiny_model.unet
    args = unet_inputs(unet, 3, seed=11)
    with torch.no_grad():
        want = unet(*args)
        got = fused_copy(unet)(*args)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fused_blocks_match_module_realistic_width():
    torch.manual_seed(1)
    model = DiffusionWorldModel(11, 3, WorldModelConfig(
        horizon=8, unet=TemporalUNetConfig(dim=32, dim_mults=(1, 2, 4)))).to(DEV).eval()
    args = unet_inputs(model.unet, 2, seed=12)
    with torch.no_grad():
        assert_close(fused_copy(model.unet)(*args), model.unet(*args), rtol=1e-4, atol=1e-4)


def test_fused_blocks_gradients_match_module(tiny_model):
    """On CUDA through the op's registered autograd (Triton forward and backward); on the CPU the
    reference epilogue under autograd."""
    unet = tiny_model.unet
    x, t, returns, actions, mask = unet_inputs(unet, 2, seed=13)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(14)).to(DEV)

    def param_grads(fn):
        unet.zero_grad()
        ((fn(x, t, returns, actions, mask) - target) ** 2).mean().backward()
        return [p.grad.clone() for p in unet.parameters()]

    want = param_grads(unet)
    got = param_grads(fused_copy(unet))
    unet.zero_grad()
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-3, atol=1e-5)


# ---- the "fast" sampling backend ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sampling_model(untrained_sampling_model) -> DiffusionWorldModel:
    return untrained_sampling_model(OBS, ACT, DEV, dim=8, dim_mults=(1, 2), n_groups=2)


def sampling_inputs(b: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(b, OBS, generator=gen) * 2 - 1, torch.rand(b, ACT, generator=gen) * 2 - 1,
            torch.rand(b, generator=gen))


@pytest.mark.parametrize("b,eta", [(1, 0.0), (5, 0.0), (2, 0.5)])
def test_fast_backend_matches_reference(sampling_model, b, eta):
    s0, a0, g = sampling_inputs(b, seed=b)
    cfg = SamplingConfig(eta=eta)
    want = sample_windows(sampling_model, s0, a0, g, cfg,
                          torch.Generator(DEV).manual_seed(3), backend="reference")
    got = sample_windows(sampling_model, s0, a0, g, cfg,
                         torch.Generator(DEV).manual_seed(3), backend="fast")
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got[:, 0, :OBS], s0.to(DEV)) and torch.equal(got[:, 0, OBS:OBS + ACT],
                                                                      a0.to(DEV))
    assert torch.all(got[:, 1:, OBS:OBS + ACT] == 0)


def test_fast_backend_matches_reference_for_x0_models():
    """prediction_type "sample": the x0 -> eps conversion after the fused forward, in the "fast"
    backend (in the CUDA graph on a GPU)."""
    torch.manual_seed(1)
    m = DiffusionWorldModel(OBS, ACT, WorldModelConfig(
        horizon=T, unet=TemporalUNetConfig(dim=8, dim_mults=(1, 2), n_groups=2),
        schedule=DiffusionScheduleConfig(prediction_type="sample"))).to(DEV).eval()
    s0, a0, g = (v.to(DEV) for v in sampling_inputs(3, seed=4))
    cfg = SamplingConfig()
    want = sample_windows(m, s0, a0, g, cfg, torch.Generator(DEV).manual_seed(5))
    backend = sample_windows(m, s0, a0, g, cfg, torch.Generator(DEV).manual_seed(5),
                             backend="fast")
    assert_close(backend, want, rtol=1e-4, atol=1e-4)


def test_dispatch_rule():
    cpu = torch.zeros(1)
    assert kernels.triton_usable(cpu) == kernels.INTERPRETED
    assert kernels.INTERPRETED == (os.environ.get("TRITON_INTERPRET") == "1")
    if torch.cuda.is_available():
        assert kernels.triton_usable(cpu.cuda())


def test_fast_backend_without_triton_installed():
    """Triton is Linux-only: without it the package imports and "fast" runs on the CPU (the C++
    kernels; on CUDA the ops would have no implementation)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"           # makes `import triton` fail
        "import torch\n"
        "import dawm_fast.kernels as kernels\n"
        "from dawm_fast.sampling import SamplingConfig, sample_windows\n"
        "from dawm_fast.world_model import DiffusionWorldModel, TemporalUNetConfig, "
        "WorldModelConfig\n"
        "assert not kernels.HAS_TRITON and not kernels.triton_usable(torch.zeros(1))\n"
        "torch.manual_seed(0)\n"
        "m = DiffusionWorldModel(3, 2, WorldModelConfig(horizon=4, unet=TemporalUNetConfig("
        "dim=8, dim_mults=(1, 2), n_groups=2))).eval()\n"
        "s0, a0, g = torch.rand(2, 3), torch.rand(2, 2), torch.rand(2)\n"
        "x = [sample_windows(m, s0, a0, g, SamplingConfig(), torch.Generator().manual_seed(1),"
        " backend=b) for b in ('reference', 'fast')]\n"
        # 1e-4: the CPU fast path's GEMM convolutions round differently from mkldnn's (seen:
        # 1.5e-5 on the GPU machine's CPU)
        "torch.testing.assert_close(x[0], x[1], rtol=1e-4, atol=1e-4)\n"
    )
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                       os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


# The interpreter never runs Triton's compiler; this compiles every kernel variant the launchers
# can pick, down to a cubin for sm_90 (ptxas ships with Triton), in a process without the
# interpreter. No GPU is needed.
_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dawm_fast.kernels import ddim_update as du, groupnorm_mish as gm
INTS = {"C", "G", "N", "TC", "O", "A", "B", "esb", "est", "esc"}

def build(kernel, opts, **consts):
    sig = {a: "constexpr" if a in consts else "*fp32" if a.endswith("_ptr") else
           "i32" if a in INTS else "fp32" for a in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                              options=opts)
    assert compiled.asm["cubin"]
    return compiled.asm["ptx"]

for cpg, t in [(16, 8), (64, 4), (128, 2), (3, 3), (1, 1), (128, 64)]:
    bc, bt, warps = gm._tile(cpg, t)
    for flag in (True, False):
        build(gm._gn_mish_fwd_kernel, {"num_warps": warps}, T=t, CPG=cpg, HAS_EMB=flag,
              HAS_RES=not flag, BLOCK_C=bc, BLOCK_T=bt)
    build(gm._gn_mish_bwd_kernel, {"num_warps": warps}, T=t, CPG=cpg, BLOCK_C=bc, BLOCK_T=bt)
for clip, noise in [(True, False), (True, True), (False, True), (False, False)]:
    ptx = build(du._ddim_update_kernel, {"num_warps": 4, "enable_fp_fusion": False}, CLIP=clip,
                HAS_NOISE=noise, BLOCK=du._BLOCK)
    assert "fma" not in ptx     # every product and sum rounds as in the unfused PyTorch ops
build(du._condition_noise_kernel, {"num_warps": 4}, BLOCK=du._BLOCK)
"""


def test_kernels_compile_for_gpu():
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                       os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
