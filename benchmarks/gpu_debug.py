"""GPU crash triage: each case runs in its own process (a segfault ends only that case).

    python benchmarks/gpu_debug.py            # run every case, report
    python benchmarks/gpu_debug.py <case>     # run one case in this process
"""
from __future__ import annotations

import faulthandler
import subprocess
import sys

faulthandler.enable()
OBS, ACT, T = 3, 2, 8
C = OBS + ACT + 1


def _args(b=3, dev="cpu"):
    import torch
    g = torch.Generator().manual_seed(0)
    return dict(eps2=torch.randn(2 * b, T, C, generator=g).to(dev),
                x=torch.randn(b, T, C, generator=g).to(dev),
                s0=torch.randn(b, OBS, generator=g).to(dev),
                a0=torch.randn(b, ACT, generator=g).to(dev))


def _call_update(a):
    import torch
    return torch.ops.dawm_fast.ddim_guided_update(a["eps2"], a["x"], a["s0"], a["a0"], None, 1.2,
                                                  1.0, 0.1, 1.0, 1.0, 1.0, 0.0, 0.0)


def case_ok_cpu():
    import dawm_fast.ops as ops
    ops.load_extension()
    print(_call_update(_args()).shape)


def _expect_error(name, bad):
    """Call the op with argument ``name`` replaced by ``bad(arg)``; print the message raised."""
    import dawm_fast.ops as ops
    ops.load_extension()
    a = _args()
    a[name] = bad(a[name])
    try:
        _call_update(a)
    except RuntimeError as e:
        print("raised:", str(e)[:100])


def case_dtype_error(): _expect_error("x", lambda t: t.double())
def case_shape_error(): _expect_error("eps2", lambda t: t[:3])    # message with numbers


def case_ok_cuda():
    import dawm_fast.ops as ops
    ops.load_extension()
    print(_call_update(_args(dev="cuda")).sum().item())


def _model():
    import torch
    from dawm_fast.world_model import DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig
    torch.manual_seed(0)
    return DiffusionWorldModel(OBS, ACT, WorldModelConfig(
        unet=TemporalUNetConfig(dim=32, dim_mults=(1, 2, 4)))).cuda().eval()


def _sample(use_graph, forward_kind):
    import torch
    import dawm_fast.ops as ops
    from dawm_fast.sampling import SamplingConfig
    from dawm_fast.sampling.fast import FastStep
    from dawm_fast.sampling.loop import draw_noise, guided_loop
    m = _model()
    b = 8
    s0, a0 = torch.rand(b, OBS, device="cuda"), torch.rand(b, ACT, device="cuda")
    ret = torch.full((b,), 0.9, device="cuda")
    step = FastStep(m, SamplingConfig())
    if forward_kind == "unet":
        step.unet = m.unet            # the ops around the plain U-Net
    g = torch.Generator("cuda").manual_seed(0)
    noise, _ = draw_noise((b, m.horizon, m.transition_dim), len(step.timesteps), 0.0, g, s0)
    with torch.no_grad():
        if use_graph:
            x = ops.GraphSampler().replay(lambda *t: guided_loop(step, *t), [s0, a0, ret, noise],
                                          step.graph_key())
        else:
            x = guided_loop(step, s0, a0, ret, noise)
    torch.cuda.synchronize()
    print("ok", x.float().abs().sum().item())


def case_cpp_eager_unet(): _sample(False, "unet")
def case_cpp_eager_triton(): _sample(False, "triton")
def case_cpp_graph_unet(): _sample(True, "unet")
def case_cpp_graph_triton(): _sample(True, "triton")


CASES = [n[5:] for n in list(globals()) if n.startswith("case_")]

def _maybe_variant():
    """DEBUG_NOVIS=1: build the extension without -fvisibility=hidden (a JIT build of its own)."""
    import os
    if os.environ.get("DEBUG_NOVIS"):
        from dawm_fast.ops import _sources
        _sources.CXX_FLAGS = tuple(f for f in _sources.CXX_FLAGS if f != "-fvisibility=hidden")


if __name__ == "__main__":
    _maybe_variant()
    if len(sys.argv) > 1:
        globals()["case_" + sys.argv[1]]()
        sys.exit(0)
    crashed = []
    for name in CASES:
        r = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                           timeout=240)
        print(f"--- {name}: rc={r.returncode}\n{r.stdout[-400:]}{r.stderr[-1500:]}", flush=True)
        if r.returncode != 0:
            crashed.append(name)
    print("crashed:", crashed)
    import os
    for name in crashed:
        r = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                           timeout=240, env={**os.environ, "DEBUG_NOVIS": "1"})
        print(f"--- without -fvisibility=hidden {name}: rc={r.returncode}\n{r.stdout[-300:]}"
              f"{r.stderr[-600:]}", flush=True)
    for name in crashed[:2]:
        r = subprocess.run(["cuda-gdb", "-q", "-batch", "-ex", "set pagination off", "-ex", "run",
                            "-ex", "bt 25", "--args", sys.executable, __file__, name],
                           capture_output=True, text=True, timeout=240)
        print(f"=== cuda-gdb {name}\n{r.stdout[-5000:]}\n{r.stderr[-1000:]}", flush=True)
