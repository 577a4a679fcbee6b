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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Outcome:
    """What a finished policy reports (the classifier turns it into a result)."""

    label: int
    mean_errors: np.ndarray  # float64 [C]; NaN for classes never scored
    n_scores: np.ndarray  # int64 [C]: scores that entered each class's mean
    evaluations: int  # denoiser rows the decision rule needed (deterministic)


class ScoreTable:
    """Errors of (class, sample) pairs: ``err[c, s]``, NaN until scored.

    Sample ids are small consecutive integers (every policy numbers its samples
    0, 1, 2, ...), so the sample id is the column and writes are one vectorised
    scatter. Columns grow by doubling.
    """

    def __init__(self, n_classes: int, init_cols: int = 64):
        self.err = np.full((n_classes, init_cols), np.nan)
        self.n_cols = 0  # 1 + the largest sample id written

    def put(self, classes: np.ndarray, samples: np.ndarray, errors: np.ndarray) -> None:
        need = int(samples.max()) + 1 if len(samples) else 0
        if need > self.err.shape[1]:
            grown = np.full((self.err.shape[0], max(need, 2 * self.err.shape[1])), np.nan)
            grown[:, : self.err.shape[1]] = self.err
            self.err = grown
        self.n_cols = max(self.n_cols, need)
        self.err[classes, samples] = errors


class Policy(ABC):
    name: str = "policy"

    def __init__(self, n_classes: int, cost: np.ndarray | None = None):
        if n_classes < 1:
            raise ValueError("a policy needs at least one class")
        self.n_classes = n_classes
        self.cost = np.ones(n_classes, dtype=np.int64) if cost is None else np.asarray(cost, dtype=np.int64)
        self.table = ScoreTable(n_classes)
        self.spent = 0  # denoiser rows actually scored, speculation included

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
    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def outcome(self) -> Outcome: ...

    # -- helpers ---------------------------------------------------------------------
    @abstractmethod
    def _advance(self) -> None:
        """Apply the decision rule to whatever is now complete."""

    def _fit(self, classes: np.ndarray, budget: int) -> int:
        """How many of ``classes`` (in order) fit in ``budget`` rows."""
        if budget <= 0 or len(classes) == 0:
            return 0
        return int(np.searchsorted(np.cumsum(self.cost[classes]), budget, side="right"))
