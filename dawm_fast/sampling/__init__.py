"""Sampling entry point for the diffusion world model.

``sample_windows`` and ``generate_transitions`` take a ``backend`` name. Backends are looked up in
one dict in ``generate.py``; a later fast backend (Triton kernels / C++ CUDA-graph sampler)
registers itself there through ``register_backend`` and must follow the noise-draw order
documented at the top of ``generate.py``. No other module dispatches on the backend.
"""
from dawm_fast.sampling.generate import (SamplingConfig, available_backends,
                                         failed_health_checks, generate_transitions, healthy,
                                         register_backend, sample_windows)
from dawm_fast.sampling.fast import sample_fast   # importing it registers backend "fast"

__all__ = ["SamplingConfig", "available_backends", "failed_health_checks", "generate_transitions",
           "healthy", "register_backend", "sample_fast", "sample_windows"]
