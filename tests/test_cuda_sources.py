"""The CUDA build's sources compile without a GPU: csrc/ holds no CUDA kernels (the ops' CUDA
implementations are Triton: tests/test_kernels.py compiles them for sm_90 and checks the DDIM
update's PTX for fused multiply-adds), and the torch-side CUDA code (the CUDA graph sampler)
passes the host compiler with DAWM_FAST_WITH_CUDA against torch's headers. Skipped where nvcc is
not found."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from dawm_fast.ops import _sources

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CU_FILES = sorted(CSRC.rglob("*.cu"))


def _toolkit() -> Path | None:
    """A CUDA toolkit root with bin/nvcc and include/cuda_runtime.h: CUDA_HOME, CUDA_PATH, the
    real location of nvcc on PATH (it may be a wrapper script elsewhere), /usr/local/cuda."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parents[1]))
    cands.append("/usr/local/cuda")
    for cand in filter(None, cands):
        root = Path(cand)
        if (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists():
            return root
    return None


TOOLKIT = _toolkit()
NVCC = str(TOOLKIT / "bin" / "nvcc") if TOOLKIT else shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit on PATH "
                                                     "or CUDA_HOME)")


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"{what} failed ({proc.returncode}):\n{' '.join(cmd)}\n"
                                  f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}")
    return proc


def test_there_are_no_cuda_kernels_in_csrc():
    """One CUDA implementation per op: the Triton kernel (dawm_fast/ops/registrations.py)."""
    assert CU_FILES == [] and _sources.CUDA_SOURCES == ()


@needs_nvcc
@pytest.mark.parametrize("src", ["graph_sampler.cpp"])
def test_torch_cuda_code_compiles(src):
    """Syntax and types of the CUDA branches against this torch's headers (no linking: a CPU
    torch has the headers but not the CUDA libraries)."""
    from torch.utils import cpp_extension
    torch_inc = cpp_extension.include_paths()
    if TOOLKIT is None:
        pytest.skip("no CUDA toolkit root with include/cuda_runtime.h found")
    cuda_inc = TOOLKIT / "include"
    if not any((Path(p) / "ATen" / "cuda" / "CUDAGraph.h").exists() for p in torch_inc):
        pytest.skip("this torch ships no ATen/cuda headers")
    cmd = [shutil.which("c++") or "g++", "-std=c++20", "-fsyntax-only", *_sources.CXX_FLAGS,
           f"-D{_sources.CUDA_DEFINE}", "-DTORCH_EXTENSION_NAME=_C", f"-I{CSRC}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_inc}",
           *(f"-I{p}" for p in torch_inc)]
    if not any((Path(p) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists()
               for p in torch_inc):
        # A CPU torch lacks this generated header; it only sets C10_CUDA_BUILD_SHARED_LIBS.
        cmd.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    _run([*cmd, str(CSRC / src)], f"c++ -fsyntax-only {src}")
