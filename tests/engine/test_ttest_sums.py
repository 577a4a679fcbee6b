"""The t-test policy's running sums against the rule stated plainly (:func:`sequential_ttest`)."""

import numpy as np
import pytest

from diffcls_fast.engine.policies import (
    TTestPolicy,
    drops_from_sums,
    paired_t_pvalues,
    paired_t_pvalues_from_sums,
    sequential_ttest,
)


def _sums(diffs):
    return diffs.sum(axis=1), (diffs * diffs).sum(axis=1), (diffs == diffs[:, :1]).all(axis=1), diffs[:, 0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 2, 3, 21, 400])
@pytest.mark.parametrize("sides", [1, 2])
def test_pvalues_from_sums_match_the_two_pass_formula(seed, n, sides):
    rng = np.random.default_rng(seed)
    diffs = rng.normal(rng.normal(0, 1e-3, (9, 1)), rng.uniform(1e-3, 1, (9, 1)), (9, n))
    diffs[0] = 0.0  # identical classes
    diffs[1] = 0.25  # a constant non-zero difference
    diffs[2] = -0.25
    dsum, dsq, const, first = _sums(diffs)
    got = paired_t_pvalues_from_sums(n, dsum, dsq, const, first, sides)
    want = paired_t_pvalues(diffs, sides)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-12)
    assert not np.isnan(got).any()


def _feed(policy, err, rng, speculate):
    """Drive ``policy`` with scores from the table ``err``, in random chunks."""
    while not policy.done:
        c, s = policy.take(int(rng.integers(1, 40)), speculate=speculate and bool(rng.integers(2)))
        assert len(c), "policy stalled"
        order = rng.permutation(len(c))  # arrival order within a batch is not the policy's business
        policy.observe(c[order], s[order], err[c[order], s[order]])
    return policy.outcome()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_classes", [2, 7, 60, 400])
def test_policy_matches_the_plain_rule(seed, n_classes):
    rng = np.random.default_rng(seed)
    n = 300
    truth = int(rng.integers(n_classes))
    gap = rng.uniform(0.0005, 0.01)
    offset = gap * np.abs(np.arange(n_classes) - truth)[:, None]
    err = rng.exponential(1.0, (1, n)) * (1 + offset) + rng.normal(0, 0.02, (n_classes, n))
    if seed % 2:
        # Coarse values: exact ties and constant differences happen. Eighths keep every sum exact, so a tie
        # between two classes' means is exact in both orders of summation and both pick the lower class id.
        err = np.round(err * 8) / 8
    min_scores = int(rng.choice([1, 2, 5, 20]))
    cutoff = float(rng.choice([1e-3, 2e-3, 0.05]))
    sides = int(rng.choice([1, 2]))
    want_label, want_used = sequential_ttest(err, min_scores, n, cutoff, sides)
    policy = TTestPolicy(n_classes, lambda i: 500, min_scores, n, cutoff, sides)
    o = _feed(policy, err, rng, speculate=seed >= 3)
    assert o.label == want_label
    np.testing.assert_array_equal(o.n_scores, want_used)
    assert o.evaluations == int(want_used.sum())
    scored = want_used > 0
    means = np.array([err[c, : want_used[c]].mean() for c in np.flatnonzero(scored)])
    np.testing.assert_allclose(o.mean_errors[scored], means, rtol=1e-12)
    assert np.isnan(o.mean_errors[~scored]).all()


def test_pruned_classes_leave_the_table():
    rng = np.random.default_rng(0)
    n_classes, n = 1000, 400
    err = rng.exponential(1.0, (1, n)) + 0.002 * np.arange(n_classes)[:, None] + rng.normal(0, 0.01, (n_classes, n))
    policy = TTestPolicy(n_classes, lambda i: 500, max_scores=n)
    o = _feed(policy, err, rng, speculate=True)
    assert o.label == 0
    alive = int(policy.alive.sum())
    assert len(policy.table.err) <= max(8, 2 * alive) < n_classes  # memory follows the classes still alive
    assert (policy.table.row >= 0).sum() == len(policy.table.err)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 2, 3, 21, 400])
@pytest.mark.parametrize("sides", [1, 2])
@pytest.mark.parametrize("cutoff", [1e-3, 0.05])
def test_drops_from_t_critical_match_the_pvalues(seed, n, sides, cutoff):
    rng = np.random.default_rng(seed)
    diffs = rng.normal(rng.normal(0, 0.3, (200, 1)) / np.sqrt(n), 1.0, (200, n))  # near the cutoff, both ways
    diffs[0], diffs[1], diffs[2] = 0.0, 0.25, -0.25
    dsum, dsq, const, first = _sums(diffs)
    p = paired_t_pvalues(diffs, sides)
    got = drops_from_sums(n, dsum, dsq, const, first, cutoff, sides)
    clear = np.abs(p - cutoff) > 1e-6 * cutoff  # leave out rows within rounding of the cutoff
    np.testing.assert_array_equal(got[clear], (p < cutoff)[clear])
    assert 0 < got.sum() < 200 or n < 3


@pytest.mark.parametrize("scale", [1e150, 1e160, 1e300])
@pytest.mark.parametrize("sides", [1, 2])
def test_overflowed_sums_never_drop_a_class(scale, sides):
    """Regression: sums that overflow (a squared difference past the float64 range, or a sum of them) made ss
    NaN, and the row then fell to the zero-spread branch, where a non-zero mean drops it: the p-values say p = 1
    there (sd = inf, t = 0)."""
    diffs = np.tile([1.0, 2.0, 3.0, 1.5, 2.5], (2, 4)) * scale
    diffs[1] *= -1
    with np.errstate(over="ignore"):
        dsum, dsq, const, first = _sums(diffs)
    n = diffs.shape[1]
    p = paired_t_pvalues_from_sums(n, dsum, dsq, const, first, sides)
    got = drops_from_sums(n, dsum, dsq, const, first, 0.05, sides)
    np.testing.assert_array_equal(got, p < 0.05)
    np.testing.assert_array_equal(p < 0.05, paired_t_pvalues(diffs, sides) < 0.05)
