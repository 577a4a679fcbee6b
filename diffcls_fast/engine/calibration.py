"""Calibration of the posterior: expected calibration error, NLL, and fitting the temperature and floor.

The posterior a result reports (:func:`.results.posterior`) is a softmax over
the *finalists* (classes still competing when the policy decided) with
temperature ``T``, mixed with a uniform *floor* ``alpha`` over all classes::

    p_c = (1 - alpha) * softmax(-mean_error / T)_c [c a finalist, else 0] + alpha / C

A pruned class thus gets ``alpha / C``: defined, never 0 (so the NLL stays
finite when the policy pruned the true class), and not a softmax over means
taken on fewer samples. The label, the finalist with the lowest mean error,
stays the top class. ``T`` and ``alpha`` are fitted per model on its
``train`` split (never held out) by :func:`fit_calibration`, and shipped in the
model's ``diffcls.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, ``n_bins`` equal-width bins on [0, 1]."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    if len(confidence) == 0:
        return 0.0
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs(confidence[m].mean() - correct[m].mean())
    return float(total / len(confidence))


def nll(p_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    p_true = np.asarray(p_true, np.float64)
    return float(np.mean(-np.log(np.clip(p_true, 1e-12, 1.0)))) if len(p_true) else 0.0


def calibrated(mean_errors: np.ndarray, finalist: np.ndarray, temperature: float, floor: float) -> np.ndarray:
    """The posterior above for one image: ``mean_errors`` [C] (NaN where unscored), ``finalist`` bool [C]."""
    c = len(mean_errors)
    p = np.zeros(c)
    ok = finalist & ~np.isnan(mean_errors)
    if ok.any():
        z = -mean_errors[ok] / temperature
        z = np.exp(z - z.max())
        p[ok] = z / z.sum()
    return (1.0 - floor) * p + floor / c


def fit_calibration(
    mean_errors: Sequence[np.ndarray],
    finalists: Sequence[np.ndarray],
    labels: Sequence[int],
    temperatures: np.ndarray | None = None,
    floors: np.ndarray | None = None,
) -> tuple[float, float]:
    """The (temperature, floor) pair of a log-spaced grid that minimises the NLL of the true labels,
    each raised to at least its add-one (Laplace) bound.

    Why the lower bound: the floor is the probability mass the posterior puts outside the
    finalists, and its NLL-optimal value is about the maximum-likelihood estimate of how often
    the true class is pruned before the end, which is 0 whenever that never happens on the
    fitting images, as on a model's own train split (the bundled models classify their train
    compositions perfectly).
    A zero floor then gives such a held-out image an NLL of 27.6 (probability 1e-12); the
    Laplace estimate (pruned + 1) / (n + 2) does not claim more certainty than n images show.
    """
    temperatures = np.geomspace(1e-5, 1.0, 101) if temperatures is None else temperatures
    floors = np.concatenate([[0.0], np.geomspace(1e-4, 0.5, 60)]) if floors is None else floors
    best = (np.inf, 1.0, 0.0)
    for t in temperatures:
        q = np.array([calibrated(m, f, t, 0.0)[y] for m, f, y in zip(mean_errors, finalists, labels)])
        c = np.array([len(m) for m in mean_errors], dtype=np.float64)
        for a in floors:
            loss = nll((1 - a) * q + a / c)
            if loss < best[0]:
                best = (loss, float(t), float(a))
    n = len(labels)
    outside = sum(
        int(not f[y]) for f, y in zip(finalists, labels)
    )  # the floor's job: true classes pruned before the end
    inside = [(m, f, y) for m, f, y in zip(mean_errors, finalists, labels) if f[y]]
    wrong = sum(int(np.argmax(calibrated(m, f, best[1], 0.0)) != y) for m, f, y in inside)
    # The temperature's lower bound, for the same reason: the largest T at which the mean
    # probability of the answer among the finalists still reaches the add-one estimate of
    # how often that answer is right.
    target = (len(inside) - wrong + 1) / (len(inside) + 2)
    t_floor = (
        max(
            [t for t in temperatures if np.mean([calibrated(m, f, t, 0.0).max() for m, f, _ in inside]) >= target],
            default=temperatures[0],
        )
        if inside
        else temperatures[0]
    )
    return max(best[1], float(t_floor)), max(best[2], (outside + 1) / (n + 2))
