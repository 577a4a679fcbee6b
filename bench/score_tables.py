"""Per-sample score tables: every class at every point of a timestep grid, for offline policy design.

    python -m bench.score_tables --split train --limit 100 --n-grid 25    # numbers, 100 x 100 x 25 errors

Runs the engine's exhaustive policy and keeps, per image, the whole
``[classes, n_grid]`` table of errors (sample j is grid point j, timestep
``li_grid(T, n_grid)[j]``) instead of only the means. A pruning rule that
reads only means over shared samples can then be replayed on these tables for
any schedule without running the denoiser again (``bench.policy_search``).
Policies are *chosen* on the ``train`` split; their accuracy is reported by
running them for real on ``heldout`` (``bench.accuracy_vs_evals``).

Writes ``--out`` (default bench/cache/scores_<model>_<split>_<limit>x<n_grid>.npz):
``errors`` float32 [N, C, n_grid], ``labels`` int [N], ``timesteps`` int [n_grid].
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.engine.policies import exhaustive
from diffcls_fast.engine.timesteps import li_grid
from diffcls_fast.evaluate import load_eval_split


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


def score_tables(
    model: str, split: str, limit: int, n_grid: int, batch_size: int = 256, device: str | None = None
) -> dict:
    bundle = load_model(model, device=device)
    images, labels, class_names, _ = load_eval_split(model, split)
    images, labels = images[:limit], np.asarray(labels[:limit])
    clf = DiffusionClassifier(bundle, "exhaustive", n_grid=n_grid, batch_size=batch_size, use_cache=False)
    recording = _Recording(n_grid)
    clf = DiffusionClassifier.from_parts(clf.model, clf.config, replace(clf.options, policy=recording))
    t0 = time.perf_counter()
    res = clf.classify(images, class_names)
    seconds = time.perf_counter() - t0
    errors = np.stack([recording.policies[i].table.err[:, :n_grid] for i in range(len(images))]).astype(np.float32)
    assert np.isfinite(errors).all()
    acc = float(np.mean([r.label == y for r, y in zip(res, labels)]))
    return {
        "errors": errors,
        "labels": labels,
        "timesteps": li_grid(bundle.num_timesteps, n_grid),
        "seconds": seconds,
        "accuracy": acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="numbers")
    ap.add_argument("--split", default="train", choices=["train", "heldout"])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--n-grid", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or f"bench/cache/scores_{a.model}_{a.split}_{a.limit}x{a.n_grid}.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    t = score_tables(a.model, a.split, a.limit, a.n_grid, a.batch_size, a.device)
    np.savez_compressed(out, errors=t["errors"], labels=t["labels"], timesteps=t["timesteps"])
    print(f"{out}: {t['errors'].shape}, exhaustive-{a.n_grid} accuracy {t['accuracy']:.3f}, {t['seconds']:.1f} s")


if __name__ == "__main__":
    main()
