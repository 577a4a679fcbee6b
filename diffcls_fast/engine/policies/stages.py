"""Li et al.'s adaptive top-k stages, and exhaustive scoring as its one-stage case."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..timesteps import li_grid, strided_subset
from .base import CompactScoreTable, Outcome, Policy
from .options import Option, PolicySpec, positive_int


def stage_plan(
    T: int, n_samples: Sequence[int], to_keep: Sequence[int], n_classes: int
) -> list[tuple[np.ndarray, int]]:
    """The new grid indices of each stage and the number of classes it keeps.

    Pure arithmetic, also used by the docs and tests to state evaluation counts.
    """
    if len(n_samples) != len(to_keep) or not n_samples:
        raise ValueError("--n-samples and --to-keep need the same, non-zero number of values")
    if list(n_samples) != sorted(n_samples):
        raise ValueError("--n-samples must be non-decreasing")
    if any(k < 1 for k in to_keep) or list(to_keep) != sorted(to_keep, reverse=True):
        raise ValueError("--to-keep must be positive and non-increasing")
    if to_keep[-1] != 1:
        raise ValueError("the last stage must keep exactly 1 class (--to-keep ... 1)")
    n_grid = max(n_samples)
    li_grid(T, n_grid)  # validates n_grid <= T
    seen: set[int] = set()
    plan = []
    for n, keep in zip(n_samples, to_keep):
        idx = [int(i) for i in strided_subset(n_grid, n) if int(i) not in seen]
        seen.update(idx)
        plan.append((np.array(idx, dtype=np.int64), min(keep, n_classes)))
    return plan


def stage_evaluations(T: int, n_samples: Sequence[int], to_keep: Sequence[int], n_classes: int) -> int:
    """Denoiser evaluations per image of a stage schedule (one prompt per class)."""
    alive, total = n_classes, 0
    for idx, keep in stage_plan(T, n_samples, to_keep, n_classes):
        total += alive * len(idx)
        alive = min(alive, keep)
    return total


class StagedPolicy(Policy):
    """Stage k scores every surviving class at its new grid points, then keeps the
    ``to_keep[k]`` classes with the lowest mean error over all points scored so far.

    Samples are numbered in the order grid points are first scored (stage by
    stage, grid order within a stage), which is how the official code assigns
    rows of a saved noise tensor.
    """

    name = "adaptive"

    def __init__(
        self, n_classes: int, T: int, n_samples: Sequence[int], to_keep: Sequence[int], cost: np.ndarray | None = None
    ):
        grid = li_grid(T, max(n_samples))
        plan = stage_plan(T, n_samples, to_keep, n_classes)
        self._start(n_classes, cost, plan, np.concatenate([grid[idx] for idx, _ in plan]))

    def _start(
        self, n_classes: int, cost: np.ndarray | None, plan: list[tuple[np.ndarray, int]], t_of_sample: np.ndarray
    ) -> None:
        """Begin with ``plan`` (each stage's new points and the classes it keeps) and sample i's timestep
        ``t_of_sample[i]``."""
        super().__init__(n_classes, cost)
        self.table = CompactScoreTable(n_classes)
        # the mean and score count of each class pruned at a stage close (its rows then leave the table)
        self._pruned_mean = np.full(n_classes, np.nan)
        self._pruned_n = np.zeros(n_classes, dtype=np.int64)
        self.plan = plan
        self._t_of_sample = np.asarray(t_of_sample, dtype=np.int64)
        self.alive = np.arange(n_classes)
        self.stage = 0
        self._stage_start = 0  # first sample id of the current stage
        self._queue: tuple[np.ndarray, np.ndarray] | None = None
        self._pos = 0
        self._outstanding = 0  # rows taken but not observed in this stage
        self._done = n_classes == 1
        if not self._done:
            self._open_stage()

    def timestep(self, sample: int) -> int:
        return int(self._t_of_sample[sample])

    def finished_samples(self) -> int:
        # A stage scores only its own new samples; the earlier stages' are done.
        return self._stage_start

    def _open_stage(self) -> None:
        # Skip stages that add no new points (possible when n_samples repeat).
        while self.stage < len(self.plan) and len(self.plan[self.stage][0]) == 0:
            self._close_stage()
            if self._done:
                return
        if self.stage >= len(self.plan):
            self._done = True
            return
        n_new = len(self.plan[self.stage][0])
        samples = np.arange(self._stage_start, self._stage_start + n_new)
        # Class-major order: a partial take finishes whole classes first.
        self._queue = (np.repeat(self.alive, n_new), np.tile(samples, len(self.alive)))
        self._pos = 0
        self._outstanding = int(self.cost[self.alive].sum()) * n_new

    def demand(self) -> int:
        if self._done or self._queue is None:
            return 0
        return int(self.cost[self._queue[0][self._pos :]].sum())

    def take(self, budget: int, speculate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self._done or self._queue is None:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        cls, smp = self._queue
        n = self._fit(cls[self._pos :], budget)
        out = cls[self._pos : self._pos + n], smp[self._pos : self._pos + n]
        self._pos += n
        return out

    def observe(self, classes: np.ndarray, samples: np.ndarray, errors: np.ndarray) -> None:
        self._outstanding -= int(self.cost[classes].sum())
        super().observe(classes, samples, errors)

    def _advance(self) -> None:
        if not self._done and self._outstanding == 0 and self._pos == len(self._queue[0]):
            self._close_stage()
            if not self._done:
                self._open_stage()

    def _means(self, classes: np.ndarray) -> np.ndarray:
        return np.nanmean(self.table.err[self.table.row[classes], : self.table.n_cols], axis=1)

    def _close_stage(self) -> None:
        idx, keep = self.plan[self.stage]
        # The stage's scores enter the rule now: a non-finite one fails the image (first in sample, class order).
        bad = (
            self.table.first_non_finite(self.alive, self._stage_start, self._stage_start + len(idx))
            if len(idx)
            else None
        )
        if bad is not None:
            self.fail(bad)
            return
        self._stage_start += len(idx)
        means = self._means(self.alive)
        order = np.argsort(means, kind="stable")  # ties go to the lower class id
        dropped = self.alive[order[keep:]]
        self.alive = np.sort(self.alive[order[:keep]])
        self.stage += 1
        if len(self.alive) == 1 or self.stage >= len(self.plan):
            self._done = True
        elif len(dropped):
            # Later stages score only the survivors: the pruned classes' rows leave the table (memory follows the
            # classes alive, ~15 MB an image less at 1,000 classes on Li's ImageNet stages), their means stay.
            # The last stage keeps every row: a finished exhaustive table is read whole (tune, score_tables).
            rows = self.table.row[dropped]
            self._pruned_mean[dropped] = means[order[keep:]]
            self._pruned_n[dropped] = self.table.scored[rows, : self.table.n_cols].sum(axis=1)
            self.table.keep(self.alive)

    def outcome(self) -> Outcome:
        if self.n_classes == 1:
            return Outcome(0, np.array([np.nan]), np.zeros(1, np.int64), 0)
        means, n = self._pruned_mean.copy(), self._pruned_n.copy()
        kept = np.flatnonzero(self.table.row >= 0)  # every class until a stage pruned some
        rows = self.table.row[kept]
        err = self.table.err[rows, : self.table.n_cols]
        scored = self.table.scored[rows, : self.table.n_cols]
        n[kept] = scored.sum(axis=1)
        with np.errstate(invalid="ignore"):
            means[kept] = np.where(
                n[kept] > 0, np.sum(np.where(scored, err, 0.0), axis=1) / np.maximum(n[kept], 1), np.nan
            )
        label = int(self.alive[np.argmin(means[self.alive])])
        return Outcome(label, means, n.astype(np.int64), self.spent, self.failure)


def exhaustive(n_classes: int, T: int, n_samples: int, cost: np.ndarray | None = None) -> StagedPolicy:
    """Every class at every point of an evenly spaced n-point grid."""
    p = StagedPolicy(n_classes, T, [n_samples], [1], cost)
    p.name = "exhaustive"
    return p


def _check_exhaustive(o, T: int | None, n_classes: int) -> None:
    stage_plan(o["n_grid"] if T is None else T, [o["n_grid"]], [1], n_classes)


def _check_adaptive(o, T: int | None, n_classes: int) -> None:
    stage_plan(max(o["n_samples"]) if T is None else T, o["n_samples"], o["to_keep"], n_classes)


def _adaptive_samples(o, T: int | None) -> int:
    plan = stage_plan(max(o["n_samples"]) if T is None else T, o["n_samples"], o["to_keep"], 2)
    return sum(len(idx) for idx, _ in plan)


EXHAUSTIVE = PolicySpec(
    name="exhaustive",
    summary="every class at every point of Li et al.'s n-point timestep grid",
    options=(Option("n_grid", int, 50, "timesteps on the grid", parse=positive_int),),
    make=lambda o, n_classes, T, bank, key, cost: exhaustive(n_classes, T, o["n_grid"], cost),
    check=_check_exhaustive,
    max_samples=lambda o, T: o["n_grid"],
    describe=lambda o: f"exhaustive(grid={o['n_grid']})",
    samples_option="n_grid",
)

ADAPTIVE = PolicySpec(
    name="adaptive",
    summary="Li et al.'s stages: score the survivors on more grid points, keep the top k after each stage",
    options=(
        Option("n_samples", int, (50, 500), "grid points per stage", nargs="+", parse=positive_int),
        Option("to_keep", int, (5, 1), "classes kept after each stage", nargs="+", parse=positive_int),
    ),
    make=lambda o, n_classes, T, bank, key, cost: StagedPolicy(n_classes, T, o["n_samples"], o["to_keep"], cost),
    check=_check_adaptive,
    max_samples=_adaptive_samples,
    describe=lambda o: f"adaptive(n_samples={o['n_samples']}, to_keep={o['to_keep']})",
    samples_option="n_samples",
)
