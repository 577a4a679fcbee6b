"""Plain-torch references of the fused ops.

These are the CPU path, the ground truth of the kernel tests, and the baseline
of the kernel benchmarks: one copy, shared. Signatures match the Triton
launchers exactly.
"""

from __future__ import annotations

import torch

ERROR_KINDS = ("l2", "l1", "huber")
HUBER_DELTA = 1.0


def make_noisy(
    x0: torch.Tensor,
    eps: torch.Tensor,
    img_idx: torch.Tensor,
    noise_idx: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_t[q] = a[q] * x0[img_idx[q]] + b[q] * eps[noise_idx[q]], computed in float32.

    x0 [I, C, H, W], eps [N, C, H, W], img_idx / noise_idx [Q] int, a / b [Q] float32.
    ``out`` is a preallocated [Q, C, H, W] buffer (any float dtype); it is written and returned.
    """
    q = img_idx.numel()
    view = (q,) + (1,) * (x0.dim() - 1)
    xt = a.float().view(view) * x0[img_idx].float() + b.float().view(view) * eps[noise_idx].float()
    if out is None:
        out = torch.empty((q,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    out.copy_(xt)
    return out


def query_errors(
    eps_hat: torch.Tensor,
    eps: torch.Tensor,
    noise_idx: torch.Tensor,
    kind: str = "l2",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """[Q] float32: mean over elements of d(eps_hat[q], eps[noise_idx[q]]), times weight[q].

    d is the squared error (l2), the absolute error (l1) or the Huber loss
    (delta 1, quadratic below it). Accumulated in float32 whatever the input dtype.
    """
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
    q = eps_hat.shape[0]
    diff = eps_hat.float().reshape(q, -1) - eps[noise_idx].float().reshape(q, -1)
    if kind == "l2":
        d = diff * diff
    elif kind == "l1":
        d = diff.abs()
    else:
        ad = diff.abs()
        d = torch.where(ad < HUBER_DELTA, 0.5 * diff * diff, HUBER_DELTA * (ad - 0.5 * HUBER_DELTA))
    err = d.mean(dim=1)
    if weight is not None:
        err = err * weight.float()
    return err
