"""Fused construction of the noised inputs of a packed batch.

One pass: for every query q, gather its image latent and its noise row by index
and write ``a[q] * x0[img_idx[q]] + b[q] * eps[noise_idx[q]]`` in the model's
dtype into a static output buffer. The torch chain it replaces (two gathers,
two broadcasts, an add, a cast) materialises four [Q, C, H, W] temporaries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import block_settings, check_index, rows_contiguous


@triton.jit
def _make_noisy_kernel(
    x0_ptr,
    eps_ptr,
    img_ptr,
    noise_ptr,
    a_ptr,
    b_ptr,
    out_ptr,
    n_elements,
    x0_stride,
    eps_stride,
    out_stride,
    BLOCK: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64)  # int64: row * stride can exceed 2^31 for large batches
    blk = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    img = tl.load(img_ptr + q).to(tl.int64)
    nz = tl.load(noise_ptr + q).to(tl.int64)
    a = tl.load(a_ptr + q).to(tl.float32)
    b = tl.load(b_ptr + q).to(tl.float32)
    x0 = tl.load(x0_ptr + img * x0_stride + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + nz * eps_stride + offs, mask=mask, other=0.0).to(tl.float32)
    y = a * x0 + b * eps
    tl.store(out_ptr + q * out_stride + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def make_noisy(
    x0: torch.Tensor,
    eps: torch.Tensor,
    img_idx: torch.Tensor,
    noise_idx: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`diffcls_fast.kernels.reference.make_noisy`."""
    if x0.shape[1:] != eps.shape[1:]:
        raise ValueError(f"x0 rows {tuple(x0.shape[1:])} and eps rows {tuple(eps.shape[1:])} differ")
    q = img_idx.numel()
    for name, idx in (("img_idx", img_idx), ("noise_idx", noise_idx)):
        check_index(name, idx, x0.device)
    if a.numel() != q or b.numel() != q or noise_idx.numel() != q:
        raise ValueError("img_idx, noise_idx, a and b must all have Q elements")
    if out is None:
        out = torch.empty((q,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    if out.shape[0] < q or out.shape[1:] != x0.shape[1:]:
        raise ValueError(f"out must be a buffer of shape ({q}, {', '.join(map(str, x0.shape[1:]))})")
    if q == 0:
        return out
    x0, eps, out_rows = rows_contiguous(x0), rows_contiguous(eps), rows_contiguous(out, writable=True)
    n = x0[0].numel()
    block, warps = block_settings(n)
    grid = (q, triton.cdiv(n, block))
    _make_noisy_kernel[grid](
        x0,
        eps,
        img_idx.contiguous(),
        noise_idx.contiguous(),
        a.contiguous().float(),
        b.contiguous().float(),
        out_rows,
        n,
        x0.stride(0),
        eps.stride(0),
        out_rows.stride(0),
        BLOCK=block,
        num_warps=warps,
    )
    return out
