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
