"""Fused Triton kernels for the diffusion world model, each beside its plain-PyTorch reference.

Installed as ``dawm_fast.kernels`` (setup.py maps this top-level folder of the source tree there);
it imports nothing else of ``dawm_fast``: kernels take tensors and floats only. Modules:
``groupnorm_mish`` (the U-Net block epilogue, forward and backward) and ``ddim_update`` (the
guided DDIM step with the conditioning write). The launchers are the CUDA implementations of the
``dawm_fast`` ops (registered by ``dawm_fast.ops.registrations``); the package calls them only
through the ops.

``triton_usable`` says whether a launcher may run on a tensor (the tests ask it):
  * CUDA tensors: yes, when Triton is installed;
  * CPU tensors: only when the kernels were built for Triton's interpreter, i.e. TRITON_INTERPRET
    was set when this package was imported (``triton.jit`` reads it at decoration time, so a
    later change of the variable cannot affect already defined kernels).
"""
from __future__ import annotations

import os

import torch

# The kernel modules are imported here (not re-exported function by function, which would shadow
# the module names) so that INTERPRETED below is read at the moment their kernels are defined.
from . import ddim_update, groupnorm_mish
from ._triton import HAS_TRITON, triton


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)     # Triton >= 3.4; older ones read the variable as-is
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Read once, right after the kernels above were decorated, so it describes how they were built.
INTERPRETED = HAS_TRITON and _interpreting()


def triton_usable(tensor: torch.Tensor) -> bool:
    """True when the Triton launchers can run on ``tensor``'s device."""
    if tensor.is_cuda:
        return HAS_TRITON
    return INTERPRETED and tensor.device.type == "cpu"


__all__ = ["HAS_TRITON", "INTERPRETED", "ddim_update", "groupnorm_mish", "triton_usable"]
