"""Continuous batching of (image, class, sample) queries into fixed-size batches.

Each call to :meth:`Scheduler.schedule` builds the next denoiser batch from the
queries of *all* in-flight images, admitting waiting images as slots free up;
:meth:`Scheduler.update` hands the errors back and retires finished images
(schedule, run, update, as in vLLM's v1 scheduler). Batch sizes come from a
small set of buckets, so CUDA graphs and TensorRT profiles are reused; the
unused rows of a bucket are padding, counted in :class:`SchedulerStats`.

Filling order, per batch:

1. required queries of in-flight images, oldest first (finishes images early,
   which bounds latency and memory);
2. admission of waiting images while the batch has room;
3. speculative queries (``speculate="pad"``: only into rows that would be
   padding anyway, for free; ``"fill"``: up to the largest bucket, which cuts a
   lone image's latency on a GPU at the price of extra evaluations).

Pure Python and numpy; it knows policies, never tensors or backends.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .policies import Failure, Policy

SPECULATION = ("none", "pad", "fill")


def power_of_two_buckets(max_batch: int, smallest: int = 8) -> list[int]:
    """8, 16, 32, ... up to and including ``max_batch``."""
    if max_batch < 1:
        raise ValueError("batch size must be >= 1")
    out, b = [], min(smallest, max_batch)
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return out


@dataclass
class Batch:
    """One denoiser step. Rows ``[0, n_queries)`` are real; the rest up to ``size`` are padding."""

    image_ids: list[Any]  # the in-flight images in this batch (the ids they were added with)
    image: np.ndarray  # int64 [n]: index into image_ids of each query
    classes: np.ndarray  # int64 [n]: class id of each query
    samples: np.ndarray  # int64 [n]: sample id of each query (noise and timestep)
    rows: int  # denoiser rows of the real queries (prompt ensembles make this > n)
    size: int  # bucket size: rows + padding

    @property
    def n_queries(self) -> int:
        return len(self.classes)


@dataclass
class SchedulerStats:
    batches: int = 0
    rows: int = 0  # real denoiser rows scored
    padded: int = 0  # padding rows (wasted)
    speculative_rows: int = 0  # rows taken speculatively (may or may not have been needed)
    bucket_counts: dict[int, int] = field(default_factory=dict)

    @property
    def batch_fill(self) -> float:
        total = self.rows + self.padded
        return self.rows / total if total else 1.0


class Scheduler:
    def __init__(self, buckets: list[int], max_inflight: int = 64, speculate: str = "pad"):
        if speculate not in SPECULATION:
            raise ValueError(f"speculate must be one of {SPECULATION}")
        self.buckets = sorted(set(int(b) for b in buckets))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError("bucket sizes must be >= 1 (and at least one bucket)")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")  # 0 would admit nothing and never finish
        self.max_batch = self.buckets[-1]
        self.max_inflight = max_inflight
        self.speculate = speculate
        self.waiting: deque[tuple[Any, Policy]] = deque()
        self.running: OrderedDict[Any, Policy] = OrderedDict()  # insertion order = age
        self.stats = SchedulerStats()

    # -- images ------------------------------------------------------------------------
    def add(self, image_id: Any, policy: Policy) -> None:
        self.waiting.append((image_id, policy))

    def remove(self, image_ids) -> None:
        """Drop images (waiting or in flight) for good: no query of theirs is scheduled again
        (their request was cancelled or timed out). Call between steps, never inside one."""
        gone = set(image_ids)
        if not gone:
            return
        self.waiting = deque((iid, pol) for iid, pol in self.waiting if iid not in gone)
        for iid in gone:
            self.running.pop(iid, None)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def bucket_for(self, rows: int) -> int:
        for b in self.buckets:
            if b >= rows:
                return b
        return self.max_batch

    # -- one step ----------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        """The next batch, or None when no in-flight image has anything to score."""
        used = 0  # denoiser rows taken so far
        parts: list[tuple[Any, np.ndarray, np.ndarray]] = []

        def take_from(iid: Any, pol: Policy, speculate: bool, limit: int) -> None:
            nonlocal used
            c, s = pol.take(limit - used, speculate=speculate)
            if len(c):
                parts.append((iid, c, s))
                used += int(pol.cost[c].sum())

        for iid, pol in self.running.items():
            if used >= self.max_batch:
                break
            take_from(iid, pol, False, self.max_batch)
        while used < self.max_batch and self.waiting and len(self.running) < self.max_inflight:
            iid, pol = self.waiting.popleft()
            self.running[iid] = pol
            take_from(iid, pol, False, self.max_batch)
        if self.speculate != "none" and used < self.max_batch:
            target = self.max_batch if self.speculate == "fill" else (self.bucket_for(used) if used else 0)
            before = used
            for iid, pol in self.running.items():
                if used >= target:
                    break
                take_from(iid, pol, True, target)
            self.stats.speculative_rows += used - before
        if not parts:
            return None
        rows = used
        size = self.bucket_for(rows)
        batch = Batch(
            image_ids=[iid for iid, _, _ in parts],
            image=np.concatenate([np.full(len(c), i, dtype=np.int64) for i, (_, c, _) in enumerate(parts)]),
            classes=np.concatenate([c for _, c, _ in parts]),
            samples=np.concatenate([s for _, _, s in parts]),
            rows=rows,
            size=size,
        )
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.padded += size - rows
        self.stats.bucket_counts[size] = self.stats.bucket_counts.get(size, 0) + 1
        return batch

    def update(self, batch: Batch, errors: np.ndarray) -> list[Any]:
        """Feed per-query errors back; returns the ids of the images that finished.

        Images no longer in flight are skipped: a batch scheduled ahead (the engine's overlap) may hold
        speculative queries of an image that finished, or was removed, while it ran."""
        errors = np.asarray(errors, dtype=np.float64)
        bounds = np.flatnonzero(np.diff(batch.image)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(batch.image)]])
        for st, en in zip(starts, ends):
            iid = batch.image_ids[int(batch.image[st])]
            pol = self.running.get(iid)
            if pol is None:
                continue
            pol.observe(batch.classes[st:en], batch.samples[st:en], errors[st:en])
        return self.retire()

    def retire(self) -> list[Any]:
        """Remove and return the in-flight images whose policies are done."""
        finished = [iid for iid, pol in self.running.items() if pol.done]
        for iid in finished:
            del self.running[iid]
        return finished

    def fail_stalled(self) -> list[Any]:
        """Safety net for a policy bug: fail, and retire, the in-flight images whose policies are
        neither done nor asking for work (call when :meth:`schedule` returned None and
        :meth:`retire` nothing). No policy should ever get here; the tests check that."""
        for pol in self.running.values():
            if not pol.done:
                pol.fail(
                    Failure(
                        "internal",
                        f"policy {pol.name} stalled (neither done nor asking for work); this is a bug, please"
                        " report it",
                    )
                )
        return self.retire()
