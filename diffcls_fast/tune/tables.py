"""Score tables: every class's error at every point of a timestep grid, per tuning image.

The engine's own exhaustive policy does the scoring (the same batching, noise and loss as any run), and a
recording factory keeps each image's whole ``[classes, grid]`` table instead of only its means. Sample ``j``
of an image is grid point ``j`` (timestep ``li_grid(T, grid)[j]``) with that image's noise row ``j``, so every
class of an image is scored on shared (t, noise) pairs, as every policy scores them.

Tables are written in parts of ``chunk`` images into a folder next to the output (``FILE.tables/``); a rerun
with the same model, images, grid, seed and loss reads the finished parts and scores only the rest (a part is
keyed by its own images, so ``--limit 50`` reuses the parts of an earlier ``--limit 200``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.policies import exhaustive
from ..engine.timesteps import li_grid
from ..errors import UserError


@dataclass
class _Recording:
    """An exhaustive policy factory that keeps each image's policy, so its full score table can be read."""

    n_grid: int
    policies: dict = field(default_factory=dict)

    def make(self, index, n_classes, T, bank, key, cost):
        p = exhaustive(n_classes, T, self.n_grid, cost)
        self.policies[index] = p
        return p

    def describe(self) -> str:
        return f"exhaustive(grid={self.n_grid})"


def tables_key(clf: Any, ids: Sequence[str], labels: np.ndarray, n_grid: int, class_names: Sequence[str] = ()) -> str:
    """What the tables depend on: the weights, their dtype and backend, the noise seed, the loss, the grid, the
    images and their labels."""
    what = {
        "model": clf.model.fingerprint,
        "dtype": str(clf.model.dtype),  # bf16 errors are not fp32 errors
        "backend": clf.model.backend,
        "seed": clf.seed,
        "loss": clf.loss,
        "grid": n_grid,
        "classes": list(class_names),
        "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "labels": hashlib.sha256(np.asarray(labels, np.int64).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def score_tables(
    clf: Any,
    images: Sequence[Any],
    labels: np.ndarray,
    class_names: Sequence[str],
    ids: Sequence[str],
    n_grid: int,
    parts: Path,
    chunk: int = 25,
    progress: Callable[[int, str], Any] | None = None,
) -> dict:
    """``{"errors": float32 [N, C, n_grid], "timesteps": [n_grid], "scored": images scored in this run,
    "seconds": time spent scoring}``; finished parts in ``parts`` are reused."""
    import time

    parts.mkdir(parents=True, exist_ok=True)
    recording = _Recording(n_grid)
    scorer = type(clf).from_parts(clf.model, clf.config, replace(clf.options, policy=recording))
    out: list[np.ndarray] = []
    scored, seconds = 0, 0.0
    bar = progress(len(images), "score tables") if progress else None
    for start in range(0, len(images), chunk):
        n = min(chunk, len(images) - start)
        # keyed by its own images: a run on the first 50 images reuses the parts of a run on the first 200
        key = tables_key(clf, ids[start : start + n], labels[start : start + n], n_grid, class_names)
        part = parts / f"{key}-{start:06d}-{n}.npz"
        if part.is_file():
            errors = np.load(part)["errors"]
        else:
            recording.policies.clear()
            t0 = time.perf_counter()
            results = scorer.classify(images[start : start + n], list(class_names))
            seconds += time.perf_counter() - t0
            failed = [(i, r.error) for i, r in enumerate(results) if r.error]
            if failed:  # an unreadable image or a non-finite score: say which, rather than tune around it
                i, why = failed[0]
                what = f"tuning image {ids[start + i]} failed ({why})"
                raise UserError(f"{what}; remove it and rerun (finished parts are kept)")
            errors = np.stack([recording.policies[i].table.err[:, :n_grid] for i in range(n)]).astype(np.float32)
            if not np.isfinite(errors).all():
                bad = int(np.flatnonzero(~np.isfinite(errors).all(axis=(1, 2)))[0]) + start
                raise UserError(f"tuning image {ids[bad]} has a non-finite error; remove it and rerun")
            tmp = part.with_suffix(".tmp.npz")
            np.savez(tmp, errors=errors)
            tmp.replace(part)  # a part is whole or absent: a killed run resumes from its finished parts
            scored += n
        out.append(errors)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return {
        "errors": np.concatenate(out),
        "timesteps": li_grid(clf.model.num_timesteps, n_grid),
        "scored": scored,
        "seconds": seconds,
    }
