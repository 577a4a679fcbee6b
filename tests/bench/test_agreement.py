"""bench/agreement.py: when two runs of the classifier agree (labels, near-ties, error tolerance per dtype)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.agreement import DTYPE_RTOL, compare_results, compare_runs


def test_agreement_labels_and_errors():
    a = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.001, 5.0])]
    same = compare_runs([0, 0], a, [0, 0], [x * (1 + 1e-3) for x in a], rtol=1e-2)
    assert same.ok and same.same_labels == 2 and 9e-4 < same.max_rel_error_diff < 1.1e-3
    # image 1 is a near-tie (0.1% apart, under 2 x rtol): its flip is allowed and reported
    flip = compare_runs([0, 0], a, [0, 1], [a[0], np.array([1.0005, 1.0, 5.0])], rtol=1e-2)
    assert flip.ok and flip.tie_flips == [1] and flip.same_labels == 1
    # a clear decision that flips is a failure, as are errors out of tolerance
    bad = compare_runs([0, 0], a, [2, 0], [np.array([3.0, 2.0, 1.0]), a[1]], rtol=1e-2)
    assert not bad.ok and bad.confident_mismatches == [0] and bad.error_mismatches == [0]
    assert "CONFIDENT LABEL MISMATCHES" in bad.describe()
    # NaN in one run only (a class scored in one run and not in the other) is a mismatch
    nan = compare_runs([0], [np.array([1.0, np.nan])], [0], [np.array([1.0, 2.0])], rtol=1e-2)
    assert nan.error_mismatches == [0]
    # without errors, any label difference counts
    assert compare_runs([1, 2], None, [1, 3], None, rtol=1e-2).confident_mismatches == [1]
    with pytest.raises(ValueError):
        compare_runs([1], None, [1, 2], None, rtol=1e-2)


def test_agreement_digits_bf16_vs_fp32_on_cpu():
    """The tolerance the CUDA tests use for bf16 holds between bf16 and fp32 on the CPU."""
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.data.digits import load_split

    pil = load_split("heldout")[0][:6]
    runs = {}
    for dt in ("fp32", "bf16"):
        model = load_model("digits", device="cpu", dtype=dt)
        runs[dt] = DiffusionClassifier(model, "exhaustive", n_grid=3, use_cache=False).classify(pil)
    ag = compare_results(runs["fp32"], runs["bf16"], rtol=DTYPE_RTOL["bfloat16"])
    assert ag.ok, ag.describe()
    assert ag.max_rel_error_diff > 0  # bf16 really ran: the errors differ
    assert not compare_results(runs["fp32"], runs["bf16"], rtol=1e-7).ok  # and a too-tight tolerance would catch it
