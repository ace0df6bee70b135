"""Triton, or a stand-in where it is not installed.

Triton is a Linux-only dependency. The kernel modules must still import without it, because their
plain-PyTorch ``*_reference`` functions are the CPU path; the stand-in ``jit`` leaves a kernel an
ordinary (never called) function, and ``triton_usable`` is False, so no launcher is reached.
"""
from types import SimpleNamespace

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=bool)   # only evaluated as a parameter annotation

__all__ = ["HAS_TRITON", "tl", "triton"]
