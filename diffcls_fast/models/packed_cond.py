"""A condition that is more than token states, packed into one tensor row per prompt.

The engine keeps one condition row per prompt (its condition table, the embedding cache, the export spec) and
hands ``denoise(x_t, t, cond)`` a ``[B, *cond_shape]`` slice of it. SDXL, SD3, Flux and PixArt condition on
token states ``[L, D]`` plus small vectors: a pooled text embedding, SDXL's size ids, PixArt's attention mask.
Rather than widen the engine's interface to structured conditions, those vectors are laid end to end in extra
rows of width ``D`` after the tokens (zero-padded), so a condition stays one ``[L + r, D]`` tensor and everything
that indexes, caches or compares rows works unchanged; only the family's denoiser wrapper unpacks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CondLayout:
    tokens: int  # L: token states first
    width: int  # D: the token states' width, and so every row's
    extras: tuple[tuple[str, int], ...] = ()  # (name, length) of each vector, in order, after the tokens

    @property
    def extra_rows(self) -> int:
        return math.ceil(sum(n for _, n in self.extras) / self.width)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.tokens + self.extra_rows, self.width)

    def pack(self, states: torch.Tensor, **vectors: torch.Tensor) -> torch.Tensor:
        """[N, L, D] token states and [N, k] vectors (every name of ``extras``) -> [N, L + r, D]."""
        n = states.shape[0]
        flat = [vectors[name].reshape(n, size).to(states.dtype) for name, size in self.extras]
        tail = torch.zeros(n, self.extra_rows * self.width, dtype=states.dtype, device=states.device)
        if flat:
            joined = torch.cat(flat, dim=1)
            tail[:, : joined.shape[1]] = joined
        return torch.cat([states, tail.view(n, self.extra_rows, self.width)], dim=1)

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[B, L + r, D] -> ([B, L, D] token states, {name: [B, k]})."""
        states = cond[:, : self.tokens]
        tail = cond[:, self.tokens :].reshape(cond.shape[0], -1)
        out, at = {}, 0
        for name, size in self.extras:
            out[name] = tail[:, at : at + size]
            at += size
        return states, out
