"""Fused per-query error reduction: gather the noise row, subtract, apply d, reduce, weight.

Each query's elements are split into ``splits`` chunks so that small batches
still fill the GPU; every program writes one float32 partial sum, and the
partials are summed in a fixed order (deterministic, no atomics). Accumulation
is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import ERROR_KINDS, HUBER_DELTA
from .utils import block_settings, check_index, rows_contiguous

_KIND = {k: i for i, k in enumerate(ERROR_KINDS)}
TARGET_PROGRAMS = 1024  # enough programs to fill any current GPU several times over


@triton.jit
def _query_errors_kernel(
    hat_ptr,
    eps_ptr,
    noise_ptr,
    part_ptr,
    n_elements,
    hat_stride,
    eps_stride,
    chunk,
    n_splits,
    KIND: tl.constexpr,
    DELTA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    nz = tl.load(noise_ptr + q).to(tl.int64)
    start = s * chunk
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for off in range(0, chunk, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = (offs < n_elements) & (offs < start + chunk)
        h = tl.load(hat_ptr + q * hat_stride + offs, mask=mask, other=0.0).to(tl.float32)
        e = tl.load(eps_ptr + nz * eps_stride + offs, mask=mask, other=0.0).to(tl.float32)
        d = h - e
        # KIND is a constexpr: the two branches not taken compile away.
        if KIND == 0:
            v = d * d
        elif KIND == 1:
            v = tl.abs(d)
        else:
            ad = tl.abs(d)
            v = tl.where(ad < DELTA, 0.5 * d * d, DELTA * (ad - 0.5 * DELTA))
        acc += tl.where(mask, v, 0.0)
    tl.store(part_ptr + q * n_splits + s, tl.sum(acc, axis=0))


def query_errors(
    eps_hat: torch.Tensor,
    eps: torch.Tensor,
    noise_idx: torch.Tensor,
    kind: str = "l2",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`diffcls_fast.kernels.reference.query_errors`."""
    if kind not in _KIND:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
    if eps_hat.shape[1:] != eps.shape[1:]:
        raise ValueError(f"eps_hat rows {tuple(eps_hat.shape[1:])} and eps rows {tuple(eps.shape[1:])} differ")
    check_index("noise_idx", noise_idx, eps_hat.device)
    q = eps_hat.shape[0]
    if noise_idx.numel() != q:
        raise ValueError("noise_idx must have one entry per row of eps_hat")
    if q == 0:
        return torch.empty(0, dtype=torch.float32, device=eps_hat.device)
    n = eps_hat[0].numel()
    block, warps = block_settings(min(n, 2048))
    # Split each row so that Q * splits programs keep the device busy, in whole blocks.
    splits = max(1, min(triton.cdiv(n, block), TARGET_PROGRAMS // q))
    chunk = triton.cdiv(triton.cdiv(n, splits), block) * block
    splits = triton.cdiv(n, chunk)
    part = torch.empty((q, splits), dtype=torch.float32, device=eps_hat.device)
    eps_hat, eps = rows_contiguous(eps_hat), rows_contiguous(eps)
    _query_errors_kernel[(q, splits)](
        eps_hat,
        eps,
        noise_idx.contiguous(),
        part,
        n,
        eps_hat.stride(0),
        eps.stride(0),
        chunk,
        splits,
        KIND=_KIND[kind],
        DELTA=HUBER_DELTA,
        BLOCK=block,
        num_warps=warps,
    )
    err = part.sum(dim=1) / n
    if weight is not None:
        err = err * weight.float()
    return err
