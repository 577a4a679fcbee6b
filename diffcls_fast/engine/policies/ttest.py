"""Clark & Jaini's successive elimination with a paired t-test.

Sample n draws one (t, eps) shared by every remaining class. After each sample,
once n >= min_scores, every class whose paired t-test against the current best
class (lowest mean) has a p-value below ``cutoff_pval`` is dropped.

The test is **two-sided** by default (``sides=2``), the default of
``scipy.stats.ttest_rel``, which the paper's wording points to. It is also the
safer choice: "best" is picked after looking at the same data, so a one-sided
test's nominal false-drop rate is optimistic, and the two-sided p-value (twice
the one-sided one when the best class leads) halves it. ``sides=1`` is
available and measured in ``bench/accuracy_vs_evals.py``.

Speculation: the scheduler may ask for samples beyond the next one. Scores are
then replayed through the rule one sample at a time, and a class dropped at
sample n ignores whatever was computed for it later, so the label, the means and
the evaluation count are those of the sequential algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..timesteps import RandomTimesteps, StratifiedTimesteps
from .base import Outcome, Policy
from .options import Option, PolicySpec, positive_int, probability


def paired_t_pvalues(diffs: np.ndarray, sides: int = 2) -> np.ndarray:
    """p-values of the paired t-test of H0: mean(diff) = 0, one row of differences per class.

    ``diffs`` is [K, n] (scores[c] - scores[best]), finite. Two-sided matches
    ``scipy.stats.ttest_rel(a, b).pvalue``; one-sided is the alternative
    ``mean(a - b) > 0``.

    Rows of zero variance, where scipy returns NaN or a rounding-dependent value,
    are decided exactly (a row is constant when all its differences are equal):

    * all differences exactly 0 (the two classes scored identically): no
      evidence either way, p = 1;
    * all differences the same non-zero constant d: the limit of the t statistic
      is +inf or -inf, so p = 0 (two-sided, or one-sided with d > 0) and p = 1
      (one-sided with d < 0).

    With n < 2 there is no test: p = 1. The result never holds NaN.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if sides not in (1, 2):
        raise ValueError("sides must be 1 or 2")
    if not np.isfinite(diffs).all():
        raise ValueError(
            "paired_t_pvalues needs finite differences (policies fail images with non-finite scores first)"
        )
    n = diffs.shape[1]
    if n < 2:
        return np.ones(diffs.shape[0])
    from scipy.special import stdtr  # here, not at the top: the CLI reads this module's options without scipy

    with np.errstate(over="ignore"):  # |diffs| near the float64 limit: sd = inf, so t = 0 below
        mean = diffs.mean(axis=1)
        sd = diffs.std(axis=1, ddof=1)
    se = sd / np.sqrt(n)
    constant = (diffs == diffs[:, :1]).all(axis=1)
    varying = ~constant & (se > 0)  # se > 0 always holds for varying finite rows, barring underflow
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.where(varying, mean / np.where(varying, se, 1.0), 0.0)
    # Constant rows (and, defensively, rows whose spread underflows): the sign of the mean decides.
    sign = np.sign(np.where(constant, diffs[:, 0], mean))
    t = np.where(varying, t, np.copysign(np.inf, sign))  # sign 0 is settled below (p = 1)
    if sides == 2:
        p = 2.0 * stdtr(n - 1, -np.abs(t))
    else:
        p = stdtr(n - 1, -t)  # P(T >= t)
    p = np.where(~varying & (sign == 0), 1.0, p)
    return np.minimum(p, 1.0)


class TTestPolicy(Policy):
    name = "ttest"

    def __init__(
        self,
        n_classes: int,
        timesteps: Callable[[int], int],
        min_scores: int = 20,
        max_scores: int = 2000,
        cutoff_pval: float = 2e-3,
        sides: int = 2,
        cost: np.ndarray | None = None,
    ):
        super().__init__(n_classes, cost)
        if not 1 <= min_scores <= max_scores:
            raise ValueError("need 1 <= min_scores <= max_scores")
        if not 0.0 < cutoff_pval < 1.0:
            raise ValueError("cutoff_pval must be in (0, 1)")
        if sides not in (1, 2):
            raise ValueError("sides must be 1 or 2")
        self._t = timesteps
        self._t_cache: dict[int, int] = {}
        self.min_scores, self.max_scores, self.cutoff, self.sides = min_scores, max_scores, cutoff_pval, sides
        self.alive = np.ones(n_classes, dtype=bool)
        self.n = 0  # samples the rule has consumed
        self.n_used = np.zeros(n_classes, dtype=np.int64)  # samples in each class's mean
        self._issued = 0  # samples (columns) generated into the queue
        self._q_cls = np.empty(0, np.int64)
        self._q_smp = np.empty(0, np.int64)
        self._done = n_classes == 1

    def timestep(self, sample: int) -> int:
        t = self._t_cache.get(sample)
        if t is None:
            t = self._t_cache[sample] = int(self._t(sample))
        return t

    def _required_upto(self) -> int:
        # Before min_scores nothing can be pruned, so all of the first min_scores samples are certain.
        return min(self.max_scores, max(self.min_scores, self.n + 1))

    def _issue(self, upto: int) -> None:
        upto = min(upto, self.max_scores)
        if upto <= self._issued:
            return
        alive = np.flatnonzero(self.alive)
        new = np.arange(self._issued, upto)
        # Sample-major order: a partial take completes whole samples first.
        self._q_cls = np.concatenate([self._q_cls, np.tile(alive, len(new))])
        self._q_smp = np.concatenate([self._q_smp, np.repeat(new, len(alive))])
        self._issued = upto

    def _prune_queue(self) -> None:
        keep = self.alive[self._q_cls]
        if not keep.all():
            self._q_cls, self._q_smp = self._q_cls[keep], self._q_smp[keep]

    def demand(self) -> int:
        if self._done:
            return 0
        self._issue(self._required_upto())
        self._prune_queue()
        req = self._q_smp < self._required_upto()
        return int(self.cost[self._q_cls[req]].sum())

    def take(self, budget: int, speculate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self._done or budget <= 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        self._issue(self._required_upto())
        self._prune_queue()
        limit = self._required_upto()
        if speculate:
            per_sample = max(1, int(self.cost[self.alive].sum()))
            self._issue(limit + budget // per_sample + 1)
            limit = self.max_scores
        m = int(np.searchsorted(self._q_smp, limit, side="left"))  # queue is sorted by sample
        n = self._fit(self._q_cls[:m], budget)
        out = self._q_cls[:n], self._q_smp[:n]
        self._q_cls, self._q_smp = self._q_cls[n:], self._q_smp[n:]
        return out

    def _advance(self) -> None:
        while not self._done:
            if self.n >= self.table.n_cols or not self.table.scored[self.alive, self.n].all():
                return  # the next sample is not complete for every remaining class
            bad = self.table.first_non_finite(np.flatnonzero(self.alive), self.n, self.n + 1)
            if bad is not None:
                self.fail(bad)  # the rule would consume a NaN/inf score: the image fails here
                return
            self.n += 1
            self.n_used[self.alive] = self.n
            if self.n >= self.min_scores:
                self._prune()
            if self.alive.sum() == 1 or self.n >= self.max_scores:
                self._done = True

    def _prune(self) -> None:
        alive = np.flatnonzero(self.alive)
        s = self.table.err[alive, : self.n]
        best = int(np.argmin(s.mean(axis=1)))
        p = paired_t_pvalues(s - s[best], self.sides)
        p[best] = 1.0
        self.alive[alive[p < self.cutoff]] = False

    def outcome(self) -> Outcome:
        means = np.full(self.n_classes, np.nan)
        for c in np.flatnonzero(self.n_used):
            means[c] = self.table.err[c, : self.n_used[c]].mean()
        alive = np.flatnonzero(self.alive)
        label = int(alive[np.nanargmin(means[alive])]) if self.n else int(alive[0])
        evaluations = int((self.n_used * self.cost).sum())
        return Outcome(label, means, self.n_used.copy(), evaluations, self.failure)


TIMESTEP_ORDERS = {"random": RandomTimesteps, "stratified": StratifiedTimesteps}


def _make(o, n_classes: int, T: int, bank, key: int, cost) -> TTestPolicy:
    timesteps = TIMESTEP_ORDERS[o["t_order"]](T, bank, key)
    return TTestPolicy(n_classes, timesteps, o["min_scores"], o["max_scores"], o["cutoff_pval"], o["sides"], cost)


def _describe(o) -> str:
    return (
        f"ttest(min={o['min_scores']}, max={o['max_scores']}, p<{o['cutoff_pval']:g}, "
        f"{o['sides']}-sided, t={o['t_order']})"
    )


TTEST = PolicySpec(
    name="ttest",
    summary="Clark & Jaini: drop a class once a paired t-test says it is worse than the best",
    options=(
        Option("min_scores", int, 20, "samples before pruning starts", parse=positive_int),
        Option("max_scores", int, 2000, "samples at most", parse=positive_int),
        Option("cutoff_pval", float, 2e-3, "drop a class when p < this", parse=probability),
        Option("sides", int, 2, "one- or two-sided paired t-test", parse=int, choices=(1, 2)),
        Option("t_order", str, "stratified", "timestep order", choices=tuple(TIMESTEP_ORDERS), what="timestep order"),
    ),
    make=_make,
    check=lambda o, T, n_classes: TTestPolicy(
        2, lambda i: 0, o["min_scores"], o["max_scores"], o["cutoff_pval"], o["sides"]
    ),
    max_samples=lambda o, T: o["max_scores"],
    describe=_describe,
    samples_option="max_scores",
)
