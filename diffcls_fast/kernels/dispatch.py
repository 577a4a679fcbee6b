"""Choose Triton or the torch reference for each call, and remember which ran."""

from __future__ import annotations

import os

import torch

from ..errors import BackendUnavailable
from . import reference

_last: dict[str, str] = {}
MODES = ("auto", "triton", "reference")


def _mode() -> str:
    m = os.environ.get("DIFFCLS_KERNELS", "auto").lower()
    if m not in MODES:
        raise BackendUnavailable(f"DIFFCLS_KERNELS={m!r} is not one of {', '.join(MODES)}")
    return m


def _use_triton(t: torch.Tensor) -> bool:
    mode = _mode()
    if mode == "reference":
        return False
    if mode == "auto":
        return t.is_cuda and _triton_available()
    # forced
    if not _triton_available():
        raise BackendUnavailable("DIFFCLS_KERNELS=triton but triton is not installed; pip install triton")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable("DIFFCLS_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
    if not t.is_cuda:
        why = interpreter_problem()
        if why:
            raise BackendUnavailable(f"DIFFCLS_KERNELS=triton on CPU tensors: {why}")
    return True


_INTERP: list[str | None] = []


def interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run the fused kernels in this environment, or None.

    A probe, not a version table: Triton 3.6's interpreter hands a scalar kernel argument (the
    error kernel's loop bound) to ``int()`` as a 1-element array, which numpy >= 2.4 refuses
    (Triton 3.9 squeezes it first). Compiled GPU kernels are not affected. Needs TRITON_INTERPRET=1
    set before the kernels were first imported.
    """
    if not _INTERP:
        from .fused_errors import query_errors as fused

        z = torch.zeros(1, 1, 1, 1)
        try:
            fused(z, z, torch.zeros(1, dtype=torch.int64))
            _INTERP.append(None)
        except Exception as e:  # 3.6 raises InterpreterError(TypeError(...)); any failure of the probe is the reason
            import numpy
            import triton

            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _INTERP.append(
                f"Triton {triton.__version__}'s interpreter cannot run the error kernel with numpy {numpy.__version__}"
                f" ({msg}); use Triton >= 3.9 or numpy < 2.4 for interpreter runs"
            )
    return _INTERP[0]


_TRITON: bool | None = None


def _triton_available() -> bool:
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401

            _TRITON = True
        except ImportError:
            _TRITON = False
    return _TRITON


def make_noisy(x0, eps, img_idx, noise_idx, a, b, out=None):
    if _use_triton(x0):
        from .fused_noise import make_noisy as fn

        _last["make_noisy"] = "triton"
    else:
        fn = reference.make_noisy
        _last["make_noisy"] = "reference"
    return fn(x0, eps, img_idx, noise_idx, a, b, out=out)


def query_errors(eps_hat, eps, noise_idx, kind="l2", weight=None):
    if _use_triton(eps_hat):
        from .fused_errors import query_errors as fn

        _last["query_errors"] = "triton"
    else:
        fn = reference.query_errors
        _last["query_errors"] = "reference"
    return fn(eps_hat, eps, noise_idx, kind=kind, weight=weight)


def active_backend() -> str:
    """Which implementation the last calls used: 'triton', 'reference', or 'mixed'/'none'."""
    vals = set(_last.values())
    if not vals:
        return "none"
    return vals.pop() if len(vals) == 1 else "mixed"
