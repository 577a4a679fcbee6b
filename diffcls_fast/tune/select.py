"""Choosing a rule: the cheapest within a tolerance of the best accuracy, the tolerance cross-validated.

On the tuning images alone, "the cheapest rule within 1 point of the best" overfits twice: the best
accuracy is the luckiest of hundreds of candidates, and a cheap rule that happens to hit on these images is
as lucky. So the tolerance itself is chosen by K-fold cross-validation: for each fold, the rule is chosen
on the other folds and scored on this one, for every tolerance in a list. The largest tolerance whose
cross-validated accuracy stays within ``max_loss`` of the best tolerance's is then applied to all tuning
images. Ties go to the more accurate rule, then to the order of the candidates.
"""

from __future__ import annotations

import numpy as np

TOLERANCES = (0.0, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05)


def cheapest_within(acc: np.ndarray, evals: np.ndarray, tolerance: float) -> int:
    """The index of the cheapest candidate whose accuracy is within ``tolerance`` of the best."""
    ok = np.flatnonzero(acc >= acc.max() - tolerance - 1e-12)
    return int(ok[np.lexsort((-acc[ok], evals[ok]))[0]])


def cross_validate(
    hits: np.ndarray, evals: np.ndarray, folds: int = 5, seed: int = 0, tolerances=TOLERANCES
) -> list[dict]:
    """Per tolerance: the out-of-fold accuracy and mean evaluations of the rule chosen on the other folds.
    ``hits`` ``[candidates, images]`` (a hit rate per image), ``evals`` ``[candidates]``."""
    n = hits.shape[1]
    if min(folds, n) < 2:
        raise ValueError("cross-validation needs at least 2 folds and 2 images")
    fold = np.random.default_rng(seed).permutation(n) % min(folds, n)
    rows = []
    for tol in tolerances:
        right, spent = 0.0, 0.0
        for f in range(min(folds, n)):
            test = fold == f
            pick = cheapest_within(hits[:, ~test].mean(axis=1), evals, tol)
            right += hits[pick, test].sum()
            spent += evals[pick] * test.sum()
        rows.append({"tolerance": tol, "accuracy": right / n, "evaluations": spent / n})
    return rows


def choose(hits: np.ndarray, evals: np.ndarray, max_loss: float = 0.005, folds: int = 5, seed: int = 0) -> dict:
    """``{"index": the chosen candidate, "tolerance": ..., "cv": cross_validate's rows}``."""
    cv = cross_validate(hits, evals, folds, seed)
    best = max(r["accuracy"] for r in cv)
    tol = max(r["tolerance"] for r in cv if r["accuracy"] >= best - max_loss - 1e-12)
    return {"index": cheapest_within(hits.mean(axis=1), evals, tol), "tolerance": tol, "cv": cv}


def front(acc: np.ndarray, evals: np.ndarray) -> list[int]:
    """The candidates no other beats on both accuracy and cost (the accuracy-vs-evaluations front), cheapest first."""
    order = np.lexsort((-acc, evals))
    out, best = [], -1.0
    for i in order:
        if acc[i] > best + 1e-12:
            out.append(int(i))
            best = acc[i]
    return out
