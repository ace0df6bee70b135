"""Where the C++/CUDA sources are and how they are compiled: one description for both builds.

setup.py (ahead-of-time build) loads this file by path, and ``loader`` (the JIT build on first use)
imports it, so the two builds always compile the same files with the same flags. Standard library
only: setup.py runs it where torch may not be importable.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Repository layout (editable install, source checkout): <repo>/csrc beside <repo>/dawm_fast.
# Installed wheel: setup.py's build_py copies csrc/ into the package as dawm_fast/_csrc.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
CSRC_CANDIDATES = (_PACKAGE_DIR.parent / "csrc", _PACKAGE_DIR / "_csrc")

# Relative to the csrc directory.
CPU_SOURCES = ("ops.cpp", "cpu/ddim_update_cpu.cpp", "cpu/groupnorm_mish_cpu.cpp",
               "graph_sampler.cpp")
# The CUDA build compiles the same files with CUDA graph support (CUDA_DEFINE); the ops' CUDA
# kernels are Triton, registered from Python (dawm_fast/ops/registrations.py).
CUDA_SOURCES: tuple[str, ...] = ()
SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")

# -ffp-contract=off: the fused CPU update must round every product and sum separately, as the
# unfused PyTorch reference does (see csrc/cpu/ddim_update_cpu.cpp). -fno-trapping-math (no
# change to any rounding) lets gcc if-convert and vectorize the Mish loop of
# csrc/cpu/groupnorm_mish_cpu.cpp. -fvisibility=hidden: pybind11
# expects it; the module's PyInit symbol and the op registrations do not need exported symbols.
CXX_FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-fvisibility=hidden")
NVCC_FLAGS = ("-O3",)
CUDA_DEFINE = "DAWM_FAST_WITH_CUDA"
# The AOT build records the hash of the sources it compiled here, beside dawm_fast/_C*.so.
HASH_FILE = "_C.sources-sha256"
DEFAULT_CUDA_ARCH_LIST = "9.0+PTX"   # Hopper, + PTX for newer GPUs; TORCH_CUDA_ARCH_LIST wins


def find_csrc() -> Path | None:
    """The directory holding ops.cpp, or None when the sources are not shipped."""
    for cand in CSRC_CANDIDATES:
        if (cand / "ops.cpp").is_file():
            return cand
    return None


def source_files(csrc: Path, with_cuda: bool) -> list[Path]:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [csrc / n for n in names]


def source_hash(csrc: Path) -> str:
    """sha256 over every source and header below csrc (path and content) and the flags."""
    h = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in SOURCE_SUFFIXES):
        h.update(path.relative_to(csrc).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    h.update(repr((CXX_FLAGS, NVCC_FLAGS, CUDA_DEFINE)).encode())
    return h.hexdigest()


def env_flag(name: str) -> bool | None:
    """True / False for 1/true/yes/on and 0/false/no/off; None when unset or empty."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: expected 0 or 1")


def find_cuda_home(cpp_extension) -> str | None:
    """The CUDA toolkit torch.utils.cpp_extension compiles with (its CUDA_HOME: the CUDA_HOME or
    CUDA_PATH variable, else the parent of nvcc's directory, else /usr/local/cuda), if it really
    holds nvcc and the runtime headers (a bare nvcc wrapper script on PATH does not)."""
    home = getattr(cpp_extension, "CUDA_HOME", None)
    if home and (Path(home) / "bin" / "nvcc").exists() \
            and (Path(home) / "include" / "cuda_runtime.h").exists():
        return home
    return None


def cuda_build(torch, cpp_extension) -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why (for messages).

    Default: yes when torch has CUDA (torch.version.cuda) and a CUDA toolkit is found.
    DAWM_FAST_CUDA=0 forces a CPU-only build; DAWM_FAST_CUDA=1 makes a missing piece an error.
    """
    flag = env_flag("DAWM_FAST_CUDA")
    if flag is False:
        return False, "DAWM_FAST_CUDA=0"
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} has no CUDA"
        if flag:
            raise RuntimeError(f"DAWM_FAST_CUDA=1 but {why}")
        return False, why
    if find_cuda_home(cpp_extension) is None:
        why = ("no CUDA toolkit found (set CUDA_HOME to the toolkit root holding bin/nvcc and "
               "include/cuda_runtime.h)")
        if flag:
            raise RuntimeError(f"DAWM_FAST_CUDA=1 but {why}")
        return False, why
    return True, f"torch CUDA {torch.version.cuda}"
