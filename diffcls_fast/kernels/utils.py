"""Launch settings shared by the Triton launchers."""

from __future__ import annotations

import torch

MAX_BLOCK = 4096


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block_settings(n_elements: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a 1-D pass over ``n_elements`` contiguous values."""
    block = min(MAX_BLOCK, max(128, next_power_of_2(n_elements)))
    num_warps = 4 if block <= 1024 else 8 if block <= 2048 else 16
    return block, num_warps


def check_index(name: str, idx: torch.Tensor, device: torch.device) -> None:
    if idx.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {idx.dtype}")
    if idx.device != device:
        raise ValueError(f"{name} is on {idx.device}, expected {device}")


def rows_contiguous(t: torch.Tensor, writable: bool = False) -> torch.Tensor:
    """``t`` if each row ``t[i]`` is one contiguous run of memory (any row stride), else a contiguous copy.

    Kernels take the row stride as an argument, so slices of larger buffers need
    no copy. A write target cannot be copied, so it must already qualify.
    """
    inner_ok = t[0].is_contiguous() if t.shape[0] else True
    if inner_ok and t.stride(0) >= (t[0].numel() if t.shape[0] else 0):
        return t
    if writable:
        raise ValueError("out must have contiguous rows")
    return t.contiguous()
