"""A score memo for benchmark sweeps: configurations that ask the same queries pay for them once.

Every query's error is a pure function of (seed, image, sample index, timestep, class): the
noise bank derives the noise from the first three, and the policy maps the sample to its
timestep. Policies of one family that differ only in their stopping rule (the t-test at
p < 1e-2, 2e-3 and 1e-4 share one stratified sample sequence) therefore ask largely the same
queries, and a sweep that runs them one after another can answer the repeats from a memo
instead of the denoiser. The answers are the errors the denoiser gave for those exact
queries earlier in the same process (same model, backend and dtype), so each configuration's
picks and evaluation counts are what a run without the memo gives, up to the batch-order
float tolerance the engine already guarantees; only its wall time is smaller, and the bench
records the denoiser rows each configuration really ran next to the evaluations it needed.

Used by ``bench.accuracy_vs_evals --memo``; the engine itself never memoises (a classify
call owes its user the model's answer for each query it asks).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from diffcls_fast import DiffusionClassifier
from diffcls_fast.engine.runner import Runner
from diffcls_fast.engine.scheduler import Batch


class ScoreMemo:
    """Errors of the queries answered so far, keyed by (seed, image key, sample, timestep, class)."""

    def __init__(self) -> None:
        self.errors: dict[tuple[int, int, int, int, int], float] = {}
        self.hits = 0
        self.misses = 0


class MemoRunner(Runner):
    """A :class:`Runner` that answers repeated queries from a :class:`ScoreMemo` and runs only the new ones."""

    def __init__(self, *args, memo: ScoreMemo, **kwargs):
        super().__init__(*args, **kwargs)
        self.memo = memo

    def _keys(self, batch: Batch, states: dict) -> list[tuple[int, int, int, int, int]]:
        keys = []
        for r, c, s in zip(batch.image.tolist(), batch.classes.tolist(), batch.samples.tolist()):
            st = states[batch.image_ids[r]]
            keys.append((st.bank.seed, st.key, s, st.policy.timestep(s), c))
        return keys

    def run(self, batch: Batch, states: dict) -> np.ndarray:
        keys = self._keys(batch, states)
        known = self.memo.errors
        new = np.array([k not in known for k in keys], dtype=bool)
        self.memo.hits += int((~new).sum())
        self.memo.misses += int(new.sum())
        if new.any():
            sub = _subset(batch, new, states)
            for k, e in zip((k for k, n in zip(keys, new) if n), super().run(sub, states).tolist()):
                known[k] = e
        return np.array([known[k] for k in keys], dtype=np.float64)


def _subset(batch: Batch, keep: np.ndarray, states: dict) -> Batch:
    """The queries of ``batch`` where ``keep``, as a batch of the same bucket size (the runner pads it)."""
    req = batch.image[keep]
    present, req = np.unique(req, return_inverse=True)  # images left with no query drop out of the batch
    ids = [batch.image_ids[int(i)] for i in present]
    cls = batch.classes[keep]
    rows = sum(int(states[ids[r]].conditions.cost[c]) for r, c in zip(req.tolist(), cls.tolist()))
    return replace(
        batch, image_ids=ids, image=req.astype(np.int64), classes=cls, samples=batch.samples[keep], rows=rows
    )


class MemoClassifier(DiffusionClassifier):
    """A classifier whose engines run a :class:`MemoRunner` over a memo shared with other classifiers."""

    def __init__(self, *args, memo: ScoreMemo, **kwargs):
        super().__init__(*args, **kwargs)
        self.memo = memo
        self.config = replace(self.config, make_runner=partial(MemoRunner, memo=memo))
