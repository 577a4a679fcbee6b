"""Staged policies drop pruned classes' rows at a stage close and keep their means."""

import numpy as np

from diffcls_fast.engine.policies import StagedPolicy, stage_evaluations


def test_pruned_rows_leave_the_table_and_the_outcome_keeps_their_means():
    rng = np.random.default_rng(1)
    n_classes, T = 300, 1000
    err = (
        rng.exponential(1.0, (1, 40))
        + 0.01 * rng.permutation(n_classes)[:, None]
        + rng.normal(0, 0.05, (n_classes, 40))
    )
    p = StagedPolicy(n_classes, T, [5, 10, 40], [60, 6, 1])
    seen = np.zeros_like(err, dtype=bool)
    peak_rows = []
    while not p.done:
        c, s = p.take(int(rng.integers(1, 300)))
        p.observe(c, s, err[c, s])
        seen[c, s] = True
        peak_rows.append(len(p.table.err))
    o = p.outcome()
    assert peak_rows[-1] <= 2 * 60 < n_classes  # after the first stage the table holds the survivors only
    n = seen.sum(axis=1)
    want = np.where(n > 0, np.where(seen, err, 0).sum(axis=1) / np.maximum(n, 1), np.nan)
    np.testing.assert_array_equal(o.n_scores, n)
    np.testing.assert_allclose(o.mean_errors, want, rtol=1e-12)
    assert o.label == int(np.argmin(np.where(n == n.max(), want, np.inf)))
    assert o.evaluations == int(n.sum()) == stage_evaluations(T, [5, 10, 40], [60, 6, 1], n_classes)
