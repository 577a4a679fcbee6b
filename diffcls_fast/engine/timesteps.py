"""Timestep rules: Li et al.'s grid, uniform random draws, and a stratified low-discrepancy order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .noise import NoiseBank


def li_grid(T: int, n: int) -> np.ndarray:
    """The evenly spaced grid of Li et al.: starts at T // n // 2 and steps by T // n (n points)."""
    if not 1 <= n <= T:
        raise ValueError(f"grid size must be in [1, {T}], got {n}")
    step = T // n
    return np.arange(step // 2, T, step)[:n]


def strided_subset(n_grid: int, n: int) -> np.ndarray:
    """Indices of an evenly strided subset of ``n`` points of an ``n_grid``-point grid.

    The stride is ``n_grid // n`` and the subset is centred in each stride
    (offset ``stride // 2``), which is what reproduces the official code's
    evaluation counts (see docs/policies.md, "Evaluation counts").
    """
    if not 1 <= n <= n_grid:
        raise ValueError(f"a stage cannot take {n} of {n_grid} grid points")
    stride = n_grid // n
    return np.arange(stride // 2, n_grid, stride)[:n]


def radical_inverse(i: int) -> float:
    """Van der Corput (base 2) point of index i: 0, 1/2, 1/4, 3/4, 1/8, ..."""
    out, f = 0.0, 0.5
    while i:
        if i & 1:
            out += f
        i >>= 1
        f *= 0.5
    return out


class RandomTimesteps:
    """t_i ~ U{0, ..., T-1}, independent per sample (Clark & Jaini)."""

    name = "random"

    def __init__(self, T: int, bank: NoiseBank, key: int):
        self.T, self.bank, self.key = T, bank, key

    def __call__(self, i: int) -> int:
        return min(self.T - 1, int(self.bank.uniform(self.key, i) * self.T))


class StratifiedTimesteps:
    """t_i from a randomly rotated van der Corput sequence.

    Every prefix of length 2^k puts exactly one point in each of 2^k equal strata
    of [0, T), as Li et al.'s grid does, while any prefix can still stop early.
    The rotation (one U[0,1) per image) keeps each t_i uniformly distributed, so
    the estimate stays unbiased.
    """

    name = "stratified"

    def __init__(self, T: int, bank: NoiseBank, key: int, band: tuple[float, float] = (0.0, 1.0)):
        lo, hi = band
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"a timestep band is 0 <= lo < hi <= 1 (fractions of T), got {band}")
        self.T, self.lo, self.width = T, lo, hi - lo
        self.shift = bank.uniform(key, -1 & 0x7FFFFFFF)

    def __call__(self, i: int) -> int:
        """Sample i's timestep; with a ``band`` (lo, hi), the sequence is stratified over [lo T, hi T)."""
        u = (radical_inverse(i) + self.shift) % 1.0
        return min(self.T - 1, int((self.lo + u * self.width) * self.T))
