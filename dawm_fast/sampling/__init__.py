"""Sampling entry point for the diffusion world model.

``sample_windows`` and ``generate_transitions`` take a ``backend`` name. Backends are looked up in
one dict in ``generate.py``; "reference" and "fast" run the one guided loop (``loop.py``) with
their step function, and any other backend registers itself through ``register_backend`` and
must follow the noise-draw order documented at the top of ``generate.py``. No other module
dispatches on the backend.
"""
from dawm_fast.sampling.generate import (SamplingConfig, available_backends,
                                         failed_health_checks, generate_transitions, healthy,
                                         register_backend, sample_windows)
from dawm_fast.sampling import fast as _fast   # noqa: F401  (registers backend "fast")

__all__ = ["SamplingConfig", "available_backends", "failed_health_checks", "generate_transitions",
           "healthy", "register_backend", "sample_windows"]
