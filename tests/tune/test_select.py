"""Choosing a rule: cheapest within tolerance, cross-validated tolerance, and the accuracy-vs-cost front."""

import numpy as np

from diffcls_fast.tune.select import cheapest_within, choose, cross_validate, front


def test_cheapest_within_prefers_cost_then_accuracy():
    acc = np.array([0.90, 0.95, 0.949, 0.949, 0.80])
    evals = np.array([10, 100, 50, 50, 5])
    assert cheapest_within(acc, evals, 0.0) == 1
    assert cheapest_within(acc, evals, 0.002) == 2  # 50 evals; ties broken by accuracy, then order
    assert cheapest_within(acc, evals, 0.05) == 0
    assert cheapest_within(acc, evals, 0.2) == 4


def test_a_lucky_cheap_rule_is_not_chosen():
    """Rule 1 is cheap and hits the tuning images at random (50%); rule 0 is right 90% of the time.
    With a large tolerance alone the cheap rule would win on some folds; cross-validation sees it lose."""
    rng = np.random.default_rng(0)
    n = 200
    good = (rng.random(n) < 0.9).astype(float)
    lucky = (rng.random(n) < 0.5).astype(float)
    hits = np.stack([good, lucky])
    evals = np.array([100.0, 10.0])
    picked = choose(hits, evals, max_loss=0.005)
    assert picked["index"] == 0
    assert {r["tolerance"] for r in picked["cv"]} >= {0.0, 0.05}


def test_an_equally_good_cheaper_rule_is_chosen():
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.85).astype(float)
    hits = np.stack([base, base.copy()])
    hits[1, :2] = 1 - hits[1, :2]  # one point apart on the tuning images, by chance
    picked = choose(hits, np.array([500.0, 50.0]), max_loss=0.005)
    assert picked["index"] == 1


def test_cross_validation_is_deterministic_and_covers_every_image():
    rng = np.random.default_rng(2)
    hits = (rng.random((20, 50)) < 0.7).astype(float)
    evals = rng.integers(10, 100, 20).astype(float)
    a, b = cross_validate(hits, evals, seed=3), cross_validate(hits, evals, seed=3)
    assert a == b
    assert all(0 <= r["accuracy"] <= 1 and 10 <= r["evaluations"] <= 100 for r in a)


def test_front_is_increasing_in_both():
    acc = np.array([0.5, 0.9, 0.8, 0.95, 0.7])
    evals = np.array([10, 50, 20, 100, 30])
    idx = front(acc, evals)
    assert idx == [0, 2, 1, 3]


def test_cross_validation_needs_two_folds():
    import pytest

    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validate(np.ones((2, 10)), np.array([1.0, 2.0]), folds=1)
