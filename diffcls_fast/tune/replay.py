"""Replaying candidate rules on score tables, without running the denoiser again.

A candidate is a timestep band and a successive-halving schedule (the ``halving`` policy's ``t_band``,
``rounds`` and ``keep``; a single round is exhaustive in the band). Every policy ranks the surviving classes
of an image by their mean error over a shared prefix of its samples, so a rule is replayed exactly on a table
once its sample order is fixed: the grid points inside the band, in an order drawn per image. The real
``halving`` policy draws continuous timesteps in the band (a rotated van der Corput order), so a replayed
accuracy is an estimate of the real one; ``repeats`` orders per image average out the luck of one order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..engine.policies import halving_evaluations

LOWS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
HIGHS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
EXHAUSTIVE_SAMPLES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
LAST_TOTALS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 100)


@dataclass(frozen=True)
class Rule:
    """A candidate: the ``halving`` policy with these options."""

    band: tuple[float, float]
    rounds: tuple[int, ...]
    keep: tuple[int, ...]

    def policy(self) -> dict:
        return {"name": "halving", "rounds": list(self.rounds), "keep": list(self.keep), "t_band": list(self.band)}

    def evaluations(self, n_classes: int) -> int:
        return halving_evaluations(n_classes, self.rounds, self.keep)

    def describe(self) -> str:
        lo, hi = self.band
        if len(self.rounds) == 1:
            return f"band [{lo:g}, {hi:g}) exhaustive {self.rounds[0]}"
        rounds = " ".join(map(str, self.rounds))
        return f"band [{lo:g}, {hi:g}) rounds {rounds} / keep {' '.join(map(str, self.keep))}"


def bands(min_width: float = 0.2) -> list[tuple[float, float]]:
    return [(lo, hi) for lo in LOWS for hi in HIGHS if hi - lo >= min_width - 1e-9]


def schedules(n_classes: int, max_samples: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(rounds, keep) pairs to try: exhaustive in the band, and two- and three-round halving whose first keep
    is a few classes or a fraction of them. Cumulative ``rounds`` never exceed ``max_samples``.

    The last round's total is drawn from ``LAST_TOTALS`` and the band's whole grid, not only from multiples of
    the first: the shape that helps look-alike classes is Li et al.'s (a few samples of every class, then many
    of the two or three that lead), e.g. rounds 5 50 / keep 2 1, and a fine grid has room for it."""
    out: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    c = n_classes
    for s in EXHAUSTIVE_SAMPLES:
        if s <= max_samples:
            out.add(((s,), (1,)))
    firsts = sorted({k for k in (2, 3, 5, c // 10, c // 5, c // 3, c // 2) if 2 <= k < c})
    lasts = sorted({s for s in LAST_TOTALS if s <= max_samples} | {max_samples})
    for s1 in (1, 2, 3, 4, 5, 6, 8):
        for k1 in firsts:
            for s2 in {s1 * m for m in (2, 3, 4, 6, 8)} | set(lasts):
                if 2 * s1 <= s2 <= max_samples:
                    out.add(((s1, s2), (k1, 1)))
    for s1 in (1, 2, 3, 4, 6):
        for k1 in firsts:
            for k2 in (2, 3, 5):
                if k2 >= k1:
                    continue
                for m2 in (2, 3, 4):
                    s2 = s1 * m2
                    for s3 in {s2 * m for m in (2, 3, 4)} | set(lasts):
                        if 2 * s2 <= s3 <= max_samples:
                            out.add(((s1, s2, s3), (k1, k2, 1)))
    return sorted(out)


def band_points(timesteps: np.ndarray, T: int, band: tuple[float, float]) -> np.ndarray:
    """The grid indices whose timestep lies in ``[lo T, hi T)``."""
    lo, hi = band
    return np.flatnonzero((timesteps >= lo * T) & (timesteps < hi * T))


def prefix_sums(errors: np.ndarray, points: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """Cumulative errors ``[repeats, N, C, len(points)]`` along a random order of ``points`` per image."""
    rng = np.random.default_rng(seed)
    n = errors.shape[0]
    out = np.empty((repeats, n, errors.shape[1], len(points)), np.float64)
    for r in range(repeats):
        order = np.stack([points[rng.permutation(len(points))] for _ in range(n)])  # [N, S]
        picked = np.take_along_axis(errors, order[:, None, :], axis=2)  # [N, C, S]
        np.cumsum(picked, axis=2, out=out[r])
    return out


def replay(
    cums: np.ndarray, rounds: tuple[int, ...], keep: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One rule on prefix sums ``[R, N, C, S]``: the predicted class ``[R, N]``, and for the last comparison
    the finalists ``[R, N, C]`` (bool) and their mean errors ``[R, N, C]`` (NaN elsewhere)."""
    r_, n, c, _ = cums.shape
    alive = np.ones((r_, n, c), bool)
    means = np.full((r_, n, c), np.nan)
    finalists = alive
    for total, k in zip(rounds, keep):
        finalists = alive.copy()
        means = np.where(alive, cums[..., total - 1] / total, np.nan)
        ranked = np.argsort(np.where(alive, means, np.inf), axis=2, kind="stable")[..., : min(k, c)]
        alive = np.zeros_like(alive)
        np.put_along_axis(alive, ranked, True, axis=2)
        if min(k, c) == 1:
            break
    pred = np.argmin(np.where(finalists, means, np.inf), axis=2)
    return pred, finalists, means


def sweep(
    errors: np.ndarray, labels: np.ndarray, timesteps: np.ndarray, T: int, repeats: int = 3, seed: int = 0
) -> Iterator[tuple[Rule, np.ndarray]]:
    """Every candidate rule with its per-image hit rate ``[N]`` (the mean over ``repeats`` orders)."""
    n_classes = errors.shape[1]
    for band in bands():
        points = band_points(timesteps, T, band)
        if len(points) == 0:
            continue
        cums = prefix_sums(errors.astype(np.float64), points, repeats, seed)
        for rounds, keep in schedules(n_classes, len(points)):
            pred, _, _ = replay(cums, rounds, keep)
            yield Rule(band, rounds, keep), (pred == labels[None, :]).mean(axis=0)
