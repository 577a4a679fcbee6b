"""A fake "denoiser" for driving policies and the scheduler without a model."""

from __future__ import annotations

import numpy as np


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """A cheap, vectorised, deterministic hash of integer arrays to [0, 1)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    for k in keys:
        h = (h ^ np.asarray(k, dtype=np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def fake_errors(image: int, classes: np.ndarray, samples: np.ndarray, true_class: int, n_classes: int, gap: float = 0.05) -> np.ndarray:
    """Errors with a per-sample shared component (as shared noise gives), a class offset, and small per-query noise.

    The true class has the lowest mean; other classes are worse by ``gap`` times their distance in id.
    """
    classes = np.asarray(classes, dtype=np.int64)
    samples = np.asarray(samples, dtype=np.int64)
    img = np.full_like(samples, image)
    shared = -np.log1p(-_hash01(img, samples, np.zeros_like(samples)))  # exponential, mean 1
    own = (_hash01(img, samples, classes + 1) - 0.5) * 0.06
    d = np.abs(classes - true_class)
    dist = np.minimum(d, n_classes - d)
    return shared * (1 + gap * dist) + own


def run_policy(policy, true_class: int, n_classes: int, image: int = 0, chunk: int = 7):
    """Drive one policy to its outcome with :func:`fake_errors`, ``chunk`` rows at a time."""
    while not policy.done:
        c, s = policy.take(chunk, speculate=False)
        assert len(c), "policy stalled"
        policy.observe(c, s, fake_errors(image, c, s, true_class, n_classes))
    return policy.outcome()
