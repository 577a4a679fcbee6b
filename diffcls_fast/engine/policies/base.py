"""The engine <-> policy interface.

A policy is a per-image state machine. The scheduler asks it for queries
``(class, sample)`` with :meth:`Policy.take`, the runner scores them, and
:meth:`Policy.observe` hands the errors back. The policy decides what to prune
and when it is done. It never sees tensors, batches or backends.

Queries come in two kinds:

* *required*: the policy cannot advance until they are scored (``demand()``
  counts them);
* *speculative*: queries of a later round that may turn out to be unneeded
  (a class pruned before it). The scheduler only asks for them to fill slots
  that would otherwise be padding, or a lone image's batch. Policies replay
  their decision rule in order, so speculation changes the compute spent, never
  the result.

Each class has a *cost*: the number of denoiser rows one query takes (the
number of prompts in its ensemble). ``take`` never returns more than
``budget`` rows.

Termination: every policy reaches ``done``. A non-finite score (NaN or inf: a
broken model, a non-finite input) *fails* the image instead of entering the
rule: when the rule consumes it (the t-test sample by sample, a stage at its
close), the policy records a :class:`Failure` naming the first such score in
the rule's order (sample, then class) and stops. Non-finite scores the rule
never consumes (a speculative sample of a class pruned before it) are ignored,
as every other unconsumed score is. So whether, and where, an image fails does
not depend on batching or speculation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Failure:
    """Why a policy gave up on an image: a non-finite score, or an internal error."""

    reason: str  # "non-finite" or "internal"
    detail: str = ""
    sample: int | None = None
    cls: int | None = None
    value: float | None = None

    def message(self, class_names: list[str] | None = None) -> str:
        if self.reason == "non-finite":
            name = class_names[self.cls] if class_names is not None and self.cls is not None else self.cls
            return (
                f"non-finite denoiser error ({self.value}) at sample {self.sample}, class {name!r}: the model output or"
                " its input (image, noise, condition) holds NaN or inf"
            )
        return f"internal error: {self.detail}"


@dataclass
class Outcome:
    """What a finished policy reports (the classifier turns it into a result)."""

    label: int
    mean_errors: np.ndarray  # float64 [C]; NaN for classes never scored
    n_scores: np.ndarray  # int64 [C]: scores that entered each class's mean
    evaluations: int  # denoiser rows the decision rule needed (deterministic)
    failure: Failure | None = None  # set when the image failed; label is then meaningless


class ScoreTable:
    """Errors of (class, sample) pairs: ``err[c, s]``, NaN until scored; ``scored[c, s]`` marks
    the written ones (a score may itself be NaN: a broken model).

    Sample ids are small consecutive integers (every policy numbers its samples
    0, 1, 2, ...), so the sample id is the column and writes are one vectorised
    scatter. Columns grow by doubling.
    """

    def __init__(self, n_classes: int, init_cols: int = 64):
        self.err = np.full((n_classes, init_cols), np.nan)
        self.scored = np.zeros((n_classes, init_cols), dtype=bool)
        self.n_cols = 0  # 1 + the largest sample id written

    def put(self, classes: np.ndarray, samples: np.ndarray, errors: np.ndarray) -> None:
        need = int(samples.max()) + 1 if len(samples) else 0
        if need > self.err.shape[1]:
            cols = max(need, 2 * self.err.shape[1])
            grown = np.full((self.err.shape[0], cols), np.nan)
            grown[:, : self.err.shape[1]] = self.err
            self.err = grown
            grown_scored = np.zeros((self.err.shape[0], cols), dtype=bool)
            grown_scored[:, : self.scored.shape[1]] = self.scored
            self.scored = grown_scored
        self.n_cols = max(self.n_cols, need)
        self.err[classes, samples] = errors
        self.scored[classes, samples] = True

    def first_non_finite(self, classes: np.ndarray, start: int, stop: int) -> Failure | None:
        """The first non-finite score among ``classes`` x samples [start, stop), sample-major; None if
        all are finite."""
        block = self.err[np.asarray(classes)[:, None], np.arange(start, stop)[None, :]]
        bad = np.argwhere(~np.isfinite(block.T))  # rows (sample offset, class position), sample-major
        if not len(bad):
            return None
        s, k = (int(v) for v in bad[0])
        c = int(np.asarray(classes)[k])
        return Failure("non-finite", sample=start + s, cls=c, value=float(self.err[c, start + s]))


class CompactScoreTable(ScoreTable):
    """A :class:`ScoreTable` whose rows can be dropped: ``err[row[c]]`` holds class c's errors while
    ``row[c] >= 0``. :meth:`keep` frees the rows of classes the rule no longer reads (pruned ones), so an
    image's memory follows the classes still alive, not the label set (1,000 classes x 2,000 samples of
    float64 would be 16 MB per in-flight image). Scores of dropped classes (speculative rows that arrive
    after their class was pruned) are ignored."""

    def __init__(self, n_classes: int, init_cols: int = 64):
        super().__init__(n_classes, init_cols)
        self.row = np.arange(n_classes, dtype=np.int64)

    def put(self, classes: np.ndarray, samples: np.ndarray, errors: np.ndarray) -> None:
        rows = self.row[classes]
        live = rows >= 0
        if not live.all():
            rows, samples, errors = rows[live], samples[live], np.asarray(errors)[live]
        super().put(rows, samples, errors)

    def keep(self, classes: np.ndarray) -> None:
        """Keep only ``classes``' rows (a subset of the kept ones), when that frees at least half of the table."""
        classes = np.asarray(classes, dtype=np.int64)
        if 2 * len(classes) > len(self.err) or len(self.err) <= 8:
            return
        old = self.row[classes]
        self.err, self.scored = self.err[old], self.scored[old]
        self.row[:] = -1
        self.row[classes] = np.arange(len(classes))

    def first_non_finite(self, classes: np.ndarray, start: int, stop: int) -> Failure | None:
        classes = np.asarray(classes, dtype=np.int64)
        bad = super().first_non_finite(self.row[classes], start, stop)
        if bad is not None:  # the parent names a row: name the class
            bad.cls = int(classes[np.flatnonzero(self.row[classes] == bad.cls)[0]])
        return bad


class Policy(ABC):
    name: str = "policy"

    def __init__(self, n_classes: int, cost: np.ndarray | None = None):
        if n_classes < 1:
            raise ValueError("a policy needs at least one class")
        self.n_classes = n_classes
        self.cost = np.ones(n_classes, dtype=np.int64) if cost is None else np.asarray(cost, dtype=np.int64)
        self.table = ScoreTable(n_classes)
        self.spent = 0  # denoiser rows actually scored, speculation included
        self._done = False
        self.failure: Failure | None = None

    # -- the interface the scheduler uses -------------------------------------------
    @abstractmethod
    def timestep(self, sample: int) -> int:
        """The timestep of a sample (shared by every class of this image)."""

    @abstractmethod
    def demand(self) -> int:
        """Rows of required queries not yet taken."""

    @abstractmethod
    def take(self, budget: int, speculate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``budget`` rows of queries: (class ids, sample ids), int64 arrays."""

    def observe(self, classes: np.ndarray, samples: np.ndarray, errors: np.ndarray) -> None:
        self.table.put(classes, samples, errors)
        self.spent += int(self.cost[classes].sum())
        self._advance()

    @property
    def done(self) -> bool:
        """True once the rule has decided, or the image failed; ``take`` then returns nothing."""
        return self._done

    def fail(self, failure: Failure) -> None:
        """Give up on this image (a non-finite score, or a scheduler safety net): done, with a failure."""
        if self.failure is None:
            self.failure = failure
        self._done = True

    @abstractmethod
    def outcome(self) -> Outcome: ...

    def finished_samples(self) -> int:
        """Samples ``0 .. k-1`` are finished: no query of theirs will be taken again (so their noise rows can go).
        0 is always safe."""
        return 0

    # -- helpers ---------------------------------------------------------------------
    @abstractmethod
    def _advance(self) -> None:
        """Apply the decision rule to whatever is now complete."""

    def _fit(self, classes: np.ndarray, budget: int) -> int:
        """How many of ``classes`` (in order) fit in ``budget`` rows."""
        if budget <= 0 or len(classes) == 0:
            return 0
        return int(np.searchsorted(np.cumsum(self.cost[classes]), budget, side="right"))
