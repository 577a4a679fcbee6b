"""Fused ops of the engine's hot path, with a plain-torch reference.

``make_noisy`` and ``query_errors`` dispatch to Triton for CUDA tensors and to
:mod:`.reference` otherwise. ``DIFFCLS_KERNELS=triton|reference|auto`` forces
a choice (``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``).
"""

from .dispatch import active_backend, make_noisy, query_errors

__all__ = ["active_backend", "make_noisy", "query_errors"]
