"""Replay pruning schedules on saved score tables (``bench.score_tables``): accuracy vs evaluations, offline.

    python -m bench.policy_search bench/cache/scores_numbers_train_100x25.npz

A table holds every class's error at every point of a timestep grid for each
image, so any rule that ranks classes by their mean error over a shared prefix
of samples can be replayed exactly, for any schedule, in milliseconds. This is
how the ``halving`` policy's defaults were chosen, on the ``train`` split only;
the held-out numbers come from real runs (``bench.accuracy_vs_evals``).

Prints: each grid point's single-sample accuracy and top-k recall (which
timesteps discriminate), then accuracy and evaluations per image of successive
halving schedules over sample orders.
"""

from __future__ import annotations

import argparse

import numpy as np


def halving(
    errors: np.ndarray, labels: np.ndarray, order: np.ndarray, rounds: list[tuple[int, int]]
) -> tuple[float, float]:
    """Accuracy and evaluations per image of successive halving on tables ``errors`` [N, C, G].

    ``order`` is the sample order (grid indices); ``rounds`` is ``[(samples, keep), ...]``
    with cumulative ``samples`` (as ``--rounds``): round r scores every survivor on points
    ``order[previous samples : samples]`` and keeps the ``keep`` classes with the lowest mean
    over all points scored so far.
    """
    n, c, _ = errors.shape
    alive = np.tile(np.arange(c), (n, 1))  # [N, alive]
    used, evals = 0, 0
    for total, keep in rounds:
        s = total - used
        pts = order[used:total]
        used = total
        evals += alive.shape[1] * s
        sub = np.take_along_axis(errors[:, :, order[:used]], alive[:, :, None], axis=1).mean(axis=2)
        idx = np.argsort(sub, axis=1, kind="stable")[:, :keep]
        alive = np.take_along_axis(alive, idx, axis=1)
        assert len(pts) == s, "schedule longer than the table"
    pred = alive[:, 0]
    return float(np.mean(pred == labels)), evals / 1.0


def point_report(
    errors: np.ndarray, labels: np.ndarray, timesteps: np.ndarray
) -> list[tuple[int, float, float, float]]:
    """Per grid point: (t, top-1 accuracy, top-5 recall, top-20 recall) from that one sample."""
    rows = []
    for j, t in enumerate(timesteps):
        rank = np.argsort(errors[:, :, j], axis=1, kind="stable")
        hit = rank == labels[:, None]
        rows.append(
            (int(t), float(hit[:, :1].any(1).mean()), float(hit[:, :5].any(1).mean()), float(hit[:, :20].any(1).mean()))
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables")
    ap.add_argument("--repeats", type=int, default=5, help="random sample orders per image to average over")
    a = ap.parse_args()
    z = np.load(a.tables)
    errors, labels, ts = z["errors"].astype(np.float64), z["labels"], z["timesteps"]
    n, c, g = errors.shape
    print(
        f"{n} images, {c} classes, {g} grid points; exhaustive-{g} accuracy"
        f" {np.mean(errors.mean(2).argmin(1) == labels):.3f}"
    )
    print("t     top1   top5   top20")
    for t, a1, a5, a20 in point_report(errors, labels, ts):
        print(f"{t:4d}  {a1:.3f}  {a5:.3f}  {a20:.3f}")
    # Sample orders: the grid points inside a timestep band, in a per-image random order (the
    # policy draws stratified timesteps in the band with a random rotation per image).
    rng = np.random.default_rng(0)
    for lo, hi in ((0.0, 1.0), (0.1, 0.7), (0.15, 0.6), (0.2, 0.5)):
        band = np.flatnonzero((ts >= lo * 1000) & (ts < hi * 1000))
        draws = [[rng.permutation(band) for _ in range(n)] for _ in range(a.repeats)]  # sample orders, per image
        for rounds in SCHEDULES:
            if rounds[-1][0] > len(band):
                continue
            accs = [halving_per_image(errors, labels, orders, rounds) for orders in draws]
            print(
                f"band [{lo:.2f}, {hi:.2f})  {rounds}: acc {np.mean([x[0] for x in accs]):.4f} (min"
                f" {min(x[0] for x in accs):.3f}), {accs[0][1]:.0f} evals"
            )


SCHEDULES = [
    [(1, 1)],
    [(1, 5), (2, 1)],
    [(1, 10), (3, 1)],
    [(1, 10), (3, 3), (7, 1)],
    [(1, 10), (3, 3), (11, 1)],
    [(1, 10), (3, 5), (11, 1)],
    [(1, 20), (3, 5), (7, 1)],
    [(1, 20), (3, 5), (11, 1)],
    [(2, 10), (4, 3), (8, 1)],
    [(2, 10), (4, 3), (12, 1)],
    [(2, 5), (6, 2), (14, 1)],
    [(1, 5), (3, 2), (11, 1)],
    [(1, 3), (5, 1)],
]


def halving_per_image(
    errors: np.ndarray, labels: np.ndarray, orders: list[np.ndarray], rounds: list[tuple[int, int]]
) -> tuple[float, float]:
    """:func:`halving` with a sample order per image."""
    hits, evals = [], 0.0
    for i, order in enumerate(orders):
        acc, ev = halving(errors[i : i + 1], labels[i : i + 1], order, rounds)
        hits.append(acc)
        evals = ev
    return float(np.mean(hits)), evals


if __name__ == "__main__":
    main()
