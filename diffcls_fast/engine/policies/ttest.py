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

import functools
from collections.abc import Callable

import numpy as np

from ..timesteps import RandomTimesteps, StratifiedTimesteps
from .base import CompactScoreTable, Outcome, Policy
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

    This is the plain two-pass formula, the reference for :func:`paired_t_pvalues_from_sums`,
    which the policy runs (one pass per new sample, not per sample seen).
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
    with np.errstate(over="ignore"):  # |diffs| near the float64 limit: sd = inf, so t = 0 below
        mean = diffs.mean(axis=1)
        sd = diffs.std(axis=1, ddof=1)
    constant = (diffs == diffs[:, :1]).all(axis=1)
    return _pvalues(n, mean, sd / np.sqrt(n), constant, diffs[:, 0], sides)


def paired_t_pvalues_from_sums(
    n: int, dsum: np.ndarray, dsq: np.ndarray, constant: np.ndarray, first: np.ndarray, sides: int = 2
) -> np.ndarray:
    """:func:`paired_t_pvalues` from running sums: ``dsum`` and ``dsq`` are each row's sum of differences
    and of squared differences over ``n`` samples, ``constant`` whether all its differences are equal,
    ``first`` its first difference. Costs O(rows), whatever n is. Agrees with the two-pass formula to
    rounding (and exactly on constant rows)."""
    if sides not in (1, 2):
        raise ValueError("sides must be 1 or 2")
    if n < 2:
        return np.ones(len(dsum))
    with np.errstate(over="ignore", invalid="ignore"):
        mean = dsum / n
        # sum of squared deviations; rounding can take it a hair below 0 when the spread is tiny
        var = np.maximum(dsq - dsum * mean, 0.0) / (n - 1)
        sd = np.sqrt(var)
    sd = np.where(np.isfinite(sd), sd, np.inf)  # overflowed sums: as the two-pass formula, t = 0
    return _pvalues(n, mean, sd / np.sqrt(n), np.asarray(constant, bool), np.asarray(first, np.float64), sides)


@functools.lru_cache(maxsize=4096)
def t_critical(n: int, cutoff_pval: float, sides: int) -> float:
    """The |t| (two-sided) or t (one-sided) above which the paired t-test over ``n`` samples has
    p < ``cutoff_pval``: comparing t with it decides the rule without a p-value per class."""
    from scipy.special import stdtrit

    q = cutoff_pval / 2 if sides == 2 else cutoff_pval
    return float(-stdtrit(n - 1, q))  # P(T <= -t_c) = q


def drops_from_sums(
    n: int,
    dsum: np.ndarray,
    dsq: np.ndarray,
    constant: np.ndarray,
    first: np.ndarray,
    cutoff_pval: float,
    sides: int = 2,
) -> np.ndarray:
    """``paired_t_pvalues_from_sums(...) < cutoff_pval`` (bool per row), decided by comparing t with
    :func:`t_critical` instead of computing p-values: the rule's per-sample test, a few vector operations."""
    if n < 2:
        return np.zeros(len(dsum), dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = dsum / n
        ss = dsq - dsum * mean  # sum of squared deviations
        # Overflowed sums (ss inf, or NaN from inf - inf) count as varying: t is then 0 or NaN, never a drop, as
        # in the two-pass formula (sd = inf, p = 1); left to the sign below, a huge mean would drop the row.
        varying = ~constant & ((ss > 0) | ~np.isfinite(ss))
        t = mean / np.sqrt(ss / (n - 1) / n)
        tc = t_critical(n, cutoff_pval, sides)
        # Rows of zero spread (constant, or rounded to zero): the sign of their difference decides, p = 0 or 1.
        sign = np.where(constant, first, mean)
        if sides == 2:
            return np.where(varying, np.abs(t) > tc, sign != 0)
        return np.where(varying, t > tc, sign > 0)


def _pvalues(
    n: int, mean: np.ndarray, se: np.ndarray, constant: np.ndarray, first: np.ndarray, sides: int
) -> np.ndarray:
    from scipy.special import stdtr  # here, not at the top: the CLI reads this module's options without scipy

    varying = ~constant & (se > 0)  # se > 0 always holds for varying finite rows, barring underflow
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.where(varying, mean / np.where(varying, se, 1.0), 0.0)
    t = np.where(np.isnan(t), 0.0, t)  # inf / inf: overflowed rows carry no usable evidence
    # Constant rows (and, defensively, rows whose spread underflows): the sign of the mean decides.
    sign = np.sign(np.where(constant, first, mean))
    t = np.where(varying, t, np.copysign(np.inf, sign))  # sign 0 is settled below (p = 1)
    if sides == 2:
        p = 2.0 * stdtr(n - 1, -np.abs(t))
    else:
        p = stdtr(n - 1, -t)  # P(T >= t)
    p = np.where(~varying & (sign == 0), 1.0, p)
    return np.minimum(p, 1.0)


def sequential_ttest(
    err: np.ndarray, min_scores: int = 20, max_scores: int = 2000, cutoff_pval: float = 2e-3, sides: int = 2
) -> tuple[int, np.ndarray]:
    """The t-test rule stated plainly on a full table ``err[c, s]`` (finite): ``(label, samples in each
    class's mean)``. The reference :class:`TTestPolicy` is tested against; it recomputes every test from
    the table after each sample (O(classes x samples) per sample), as the rule reads."""
    n_classes, n_avail = err.shape
    alive = np.ones(n_classes, dtype=bool)
    n_used = np.zeros(n_classes, dtype=np.int64)
    n = 0
    while n_classes > 1 and alive.sum() > 1 and n < min(max_scores, n_avail):
        n += 1
        n_used[alive] = n
        if n >= min_scores:
            ids = np.flatnonzero(alive)
            s = err[ids, :n]
            best = int(np.argmin(s.mean(axis=1)))
            p = paired_t_pvalues(s - s[best], sides)
            p[best] = 1.0
            alive[ids[p < cutoff_pval]] = False
    ids = np.flatnonzero(alive)
    if not n:
        return int(ids[0]), n_used
    means = np.array([err[c, :n].mean() for c in ids])
    return int(ids[np.argmin(means)]), n_used


class TTestPolicy(Policy):
    """The sequential rule, sample by sample. Its host cost per sample is O(classes alive), not O(classes
    alive x samples so far): each class keeps running sums of its scores and of its paired differences
    against the current best class, and only when the best class changes are the differences summed
    again from the table (``bench/host_scaling.py`` measures it). Pruned classes' rows leave the table."""

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
        self.table = CompactScoreTable(n_classes)
        self._t = timesteps
        self._t_cache: dict[int, int] = {}
        self.min_scores, self.max_scores, self.cutoff, self.sides = min_scores, max_scores, cutoff_pval, sides
        self.alive = np.ones(n_classes, dtype=bool)
        self._alive_ids = np.arange(n_classes)  # np.flatnonzero(self.alive), kept in step
        self.n = 0  # samples the rule has consumed
        self._n_pruned = np.zeros(n_classes, dtype=np.int64)  # samples in a pruned class's mean (0: alive)
        self._sum = np.zeros(n_classes)  # each class's sum of consumed scores (frozen when it is pruned)
        # Paired differences against class self._ref over the consumed samples: sum, sum of squares, the
        # first one, and whether all are equal. Valid while self._ref >= 0 (it is the best class when set).
        self._ref = -1
        self._dsum = np.zeros(n_classes)
        self._dsq = np.zeros(n_classes)
        self._dfirst = np.zeros(n_classes)
        self._dconst = np.ones(n_classes, dtype=bool)
        self._issued = 0  # samples (columns) generated into the queue
        self._q_cls = np.empty(0, np.int64)
        self._q_smp = np.empty(0, np.int64)
        self._done = n_classes == 1

    @property
    def n_used(self) -> np.ndarray:
        """Samples in each class's mean: the samples consumed for a class still alive."""
        return np.where(self.alive, self.n, self._n_pruned)

    def finished_samples(self) -> int:
        # Sample s < n was scored for every class alive then, and the queue only holds samples >= n.
        return self.n

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
        alive = self._alive_ids
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
            per_sample = max(1, int(self.cost[self._alive_ids].sum()))
            self._issue(limit + budget // per_sample + 1)
            limit = self.max_scores
        m = int(np.searchsorted(self._q_smp, limit, side="left"))  # queue is sorted by sample
        n = self._fit(self._q_cls[:m], budget)
        out = self._q_cls[:n], self._q_smp[:n]
        self._q_cls, self._q_smp = self._q_cls[n:], self._q_smp[n:]
        return out

    def _advance(self) -> None:
        table = self.table
        while not self._done:
            alive = self._alive_ids
            rows = table.row[alive]
            if self.n >= table.n_cols or not table.scored[rows, self.n].all():
                return  # the next sample is not complete for every remaining class
            x = table.err[rows, self.n]
            if not np.isfinite(x).all():
                self.fail(table.first_non_finite(alive, self.n, self.n + 1))  # the rule would consume it
                return
            self._sum[alive] += x
            if self._ref >= 0:
                d = x - x[np.searchsorted(alive, self._ref)]
                self._dsum[alive] += d
                self._dsq[alive] += d * d
                self._dconst[alive] &= d == self._dfirst[alive]
            self.n += 1
            if self.n >= self.min_scores:
                self._prune()
            if len(self._alive_ids) == 1 or self.n >= self.max_scores:
                self._done = True

    def _restate(self, ref: int) -> None:
        """Sum the paired differences against ``ref`` again, from the table (the best class changed)."""
        alive, table = self._alive_ids, self.table
        s = table.err[table.row[alive], : self.n]
        d = s - table.err[table.row[ref], : self.n]
        self._dsum[alive] = d.sum(axis=1)
        self._dsq[alive] = (d * d).sum(axis=1)
        self._dfirst[alive] = d[:, 0]
        self._dconst[alive] = (d == d[:, :1]).all(axis=1)
        self._ref = ref

    def _prune(self) -> None:
        alive = self._alive_ids
        best = int(alive[np.argmin(self._sum[alive])])  # every class alive has n scores: the lowest sum is the best
        if best != self._ref:
            self._restate(best)
        out = drops_from_sums(
            self.n,
            self._dsum[alive],
            self._dsq[alive],
            self._dconst[alive],
            self._dfirst[alive],
            self.cutoff,
            self.sides,
        )
        out[np.searchsorted(alive, best)] = False
        if out.any():
            dropped = alive[out]
            self.alive[dropped] = False
            self._n_pruned[dropped] = self.n
            self._alive_ids = alive[~out]
            self.table.keep(self._alive_ids)

    def outcome(self) -> Outcome:
        n_used = self.n_used
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(n_used > 0, self._sum / np.maximum(n_used, 1), np.nan)
        alive = self._alive_ids
        label = int(alive[np.argmin(means[alive])]) if self.n else int(alive[0])
        evaluations = int((n_used * self.cost).sum())
        return Outcome(label, means, n_used.astype(np.int64), evaluations, self.failure)


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
