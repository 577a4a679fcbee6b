"""Winoground's text, image and group scores (Thrush et al., CVPR 2022).

A group is two images and two captions, where caption j describes image j. With
``s(i, c)`` the match score of image i and caption c (here ``-mean error``):

* text score: ``s(i0, c0) > s(i0, c1)`` and ``s(i1, c1) > s(i1, c0)``
  (each image prefers its own caption);
* image score: ``s(i0, c0) > s(i1, c0)`` and ``s(i1, c1) > s(i0, c1)``
  (each caption prefers its own image);
* group score: both.

Comparisons are strict: a tie (or a NaN) scores 0. Pure numpy, no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WinogroundScores:
    text: bool
    image: bool
    group: bool

    def to_dict(self) -> dict:
        return asdict(self)


def winoground(scores: np.ndarray) -> WinogroundScores:
    """Scores of one group from ``scores[i, c]`` (2x2, higher = better match)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (2, 2):
        raise ValueError(f"Winoground scores need a 2x2 matrix [image, caption], got shape {s.shape}")
    text = bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0])
    image = bool(s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1])
    return WinogroundScores(text, image, text and image)


def winoground_from_errors(errors: np.ndarray) -> WinogroundScores:
    """The same from mean errors (lower = better match): ``s = -error``."""
    return winoground(-np.asarray(errors, dtype=np.float64))


def summarize(groups: Iterable[WinogroundScores]) -> dict:
    """Mean text/image/group score over groups, and the counts behind them."""
    gs = list(groups)
    n = len(gs)
    out: dict = {"groups": n}
    for k in ("text", "image", "group"):
        c = sum(getattr(g, k) for g in gs)
        out[f"{k}_score"] = c / n if n else 0.0
        out[f"{k}_correct"] = c
    return out
