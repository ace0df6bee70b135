"""Loading the dawm_fast C++/CUDA extension: the prebuilt ``dawm_fast._C`` when there is one,
otherwise a JIT build of the shipped csrc/ sources with ``torch.utils.cpp_extension.load``.

Why two routes: ``pip install -e .`` builds in an isolated environment without torch on purpose
(the extension must be compiled against the torch the user runs, not a second copy), so a normal
install ships only the sources and the first use compiles them (ninja, ~1 min). With
``pip install --no-build-isolation -e .`` setup.py compiles ``dawm_fast._C`` ahead of time.

The JIT build directory is stable per torch version, CUDA flavour, Python version and source hash:
``$DAWM_FAST_EXT_DIR`` (default ``$XDG_CACHE_HOME/dawm_fast`` or ``~/.cache/dawm_fast``) /
``ext-<torch>-<cuXYZ|cpu>-py<XY>-<hash of the sources and their location>``; a later process
reuses it without compiling.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from dawm_fast.ops import _sources

BUILD_MESSAGE = "building the dawm_fast C++ extension (first use, ~1 min)"
JIT_NAME = "dawm_fast_ext"
_HINT = ('It needs a C++20 compiler (g++ >= 10 or clang++, e.g. `apt-get install g++`) and ninja '
         '(`pip install ninja`), plus for CUDA the CUDA toolkit (nvcc) matching '
         'torch.version.cuda. sample_windows(..., backend="reference") works without it.')


class ExtensionUnavailable(RuntimeError):
    """The C++ extension could neither be imported nor built."""


_lock = threading.Lock()
_ext: ModuleType | None = None
_error: ExtensionUnavailable | None = None


def extension_dir(with_cuda: bool, csrc: Path) -> Path:
    """The JIT build directory for this torch / CUDA flavour / Python / sources. The hash covers
    the sources' location too: the build files name absolute paths, so two checkouts (or a
    checkout and an installed wheel) sharing one directory would rebuild each other's module."""
    h = hashlib.sha256(_sources.source_hash(csrc).encode())
    h.update(str(csrc.resolve()).encode())
    digest = h.hexdigest()
    root = os.environ.get("DAWM_FAST_EXT_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dawm_fast"
    flavour = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return base / f"ext-{torch.__version__}-{flavour}-{py}-{digest[:16]}"


def _prebuilt() -> ModuleType | None:
    """dawm_fast._C if it exists, matches the shipped sources and imports; else None."""
    if importlib.util.find_spec("dawm_fast._C") is None:
        return None
    csrc = _sources.find_csrc()
    recorded = Path(__file__).resolve().parents[1] / _sources.HASH_FILE
    if csrc is not None and recorded.is_file() \
            and recorded.read_text().strip() != _sources.source_hash(csrc):
        # An editable install whose csrc/ changed after `pip install --no-build-isolation -e .`.
        print("dawm_fast._C was built from other sources than csrc/ holds now; using a JIT build "
              "instead (rebuild with `pip install --no-build-isolation -e .` to refresh it)",
              file=sys.stderr, flush=True)
        return None
    try:
        return importlib.import_module("dawm_fast._C")
    except ImportError as exc:
        # Typically built against another torch (undefined symbols); the JIT build replaces it.
        print(f"dawm_fast._C cannot be imported ({exc}); using a JIT build instead",
              file=sys.stderr, flush=True)
        return None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _jit_build() -> ModuleType:
    from torch.utils import cpp_extension

    csrc = _sources.find_csrc()
    if csrc is None:
        looked = ", ".join(str(p) for p in _sources.CSRC_CANDIDATES)
        raise ExtensionUnavailable(f"the dawm_fast C++ sources were not found (looked in {looked});"
                                   f" reinstall dawm_fast. {_HINT}")
    try:
        with_cuda, _why = _sources.cuda_build(torch, cpp_extension)
    except (RuntimeError, ValueError) as exc:
        raise ExtensionUnavailable(f"{exc}. {_HINT}") from exc
    build_dir = extension_dir(with_cuda, csrc)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"{JIT_NAME}{cpp_extension.LIB_EXT}").exists():
        print(BUILD_MESSAGE, file=sys.stderr, flush=True)
    defines = [f"-D{_sources.CUDA_DEFINE}"] if with_cuda else []
    try:
        return cpp_extension.load(
            name=JIT_NAME,
            sources=[str(p) for p in _sources.source_files(csrc, with_cuda)],
            extra_cflags=[*_sources.CXX_FLAGS, *defines],
            extra_cuda_cflags=[*_sources.NVCC_FLAGS],
            extra_include_paths=[str(csrc)],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            verbose=False)
    except Exception as exc:   # compiler or ninja missing, compile error, import error
        raise ExtensionUnavailable(f"could not build the dawm_fast C++ extension in {build_dir}: "
                                   f"{_tail(str(exc))}\n{_HINT}") from exc


def load_extension() -> ModuleType:
    """The extension module (GraphSampler, with_cuda()); defines torch.ops.dawm_fast.* and
    registers their Python parts (``registrations``).

    Imports the prebuilt dawm_fast._C, else JIT-builds the sources (printing one line first).
    Raises ExtensionUnavailable, once per process and then again from cache, when neither works.
    """
    global _ext, _error
    if _ext is not None:
        return _ext
    with _lock:
        if _ext is None:
            if _error is not None:
                raise _error
            try:
                ext = _prebuilt() or _jit_build()
            except ExtensionUnavailable as exc:
                _error = exc
                raise
            from dawm_fast.ops import registrations
            registrations.register()
            _ext = ext
    return _ext


def has_ops() -> bool:
    """True when the extension is loaded or can be loaded (the first call may build it)."""
    try:
        load_extension()
    except ExtensionUnavailable:
        return False
    return True
