"""The halving policy: its evaluation arithmetic, paired prefixes, timestep band, and settings checks."""

import numpy as np
import pytest

from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import HalvingPolicy, PolicyConfig, halving_evaluations, make_policy

from .fakes import run_policy


@pytest.mark.parametrize(
    "n_classes, rounds, keep, expected",
    [
        (100, [1, 3, 7], [10, 3, 1], 132),
        (10, [1, 3, 7], [10, 3, 1], 42),
        (2, [1, 3, 7], [10, 3, 1], 14),
        (100, [2, 4, 8], [10, 3, 1], 232),
        (100, [1], [1], 100),
    ],
)
def test_evaluation_arithmetic_matches_the_policy(n_classes, rounds, keep, expected):
    assert halving_evaluations(n_classes, rounds, keep) == expected
    for true_class in (0, n_classes // 2, n_classes - 1):
        p = HalvingPolicy(n_classes, 1000, NoiseBank((1,), 0), key=5, rounds=rounds, keep=keep)
        o = run_policy(p, true_class, n_classes, image=true_class)
        assert o.evaluations == expected
        finalists = np.flatnonzero(o.n_scores == o.n_scores.max())
        assert o.label == finalists[np.argmin(o.mean_errors[finalists])]
        if n_classes <= 10:
            assert o.label == true_class  # the fake's true class has the clearly lowest mean


def test_survivors_share_the_same_prefix_and_the_label_is_the_best_finalist():
    p = HalvingPolicy(30, 1000, NoiseBank((1,), 0), key=9, rounds=[1, 3, 7], keep=[10, 3, 1])
    o = run_policy(p, 4, 30, chunk=5)
    counts = o.n_scores[o.n_scores > 0]
    assert sorted(set(counts.tolist())) == [1, 3, 7]
    assert (o.n_scores == 1).sum() == 20 and (o.n_scores == 3).sum() == 7 and (o.n_scores == 7).sum() == 3
    finalists = np.flatnonzero(o.n_scores == 7)
    assert o.label == finalists[np.argmin(o.mean_errors[finalists])]


@pytest.mark.parametrize("band", [(0.15, 0.6), (0.0, 1.0), (0.5, 0.51)])
def test_timesteps_are_stratified_inside_the_band(band):
    T, n = 1000, 16
    p = HalvingPolicy(4, T, NoiseBank((1,), 0), key=3, rounds=[2, n], keep=[2, 1], band=band)
    ts = np.array([p.timestep(i) for i in range(n)])
    lo, hi = band[0] * T, band[1] * T
    assert ((ts >= int(lo)) & (ts < hi)).all()
    width = (hi - lo) / n
    if width >= 1:  # one timestep in each of n equal strata of the band
        assert sorted(((ts - lo) // width).astype(int).tolist()) == list(range(n))


def test_timesteps_depend_on_the_image_key_but_not_on_batching():
    bank = NoiseBank((1,), 0)
    a = [HalvingPolicy(5, 1000, bank, key=1).timestep(i) for i in range(12)]
    b = [HalvingPolicy(5, 1000, bank, key=2).timestep(i) for i in range(12)]
    assert a != b
    p1, p2 = HalvingPolicy(50, 1000, bank, key=1), HalvingPolicy(50, 1000, bank, key=1)
    o1, o2 = run_policy(p1, 7, 50, chunk=3), run_policy(p2, 7, 50, chunk=64)
    assert o1.label == o2.label and np.array_equal(o1.mean_errors, o2.mean_errors, equal_nan=True)


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (dict(rounds=[1, 3], keep=[1]), "same, non-zero number"),
        (dict(rounds=[3, 3, 7]), "positive and increasing"),
        (dict(keep=[10, 3, 2]), "end with 1"),
        (dict(keep=[3, 10, 1]), "non-increasing"),
        (dict(t_band=[0.6, 0.15]), "0 <= lo < hi <= 1"),
        (dict(t_band=[0.0, 1.5]), "0 <= lo < hi <= 1"),
    ],
)
def test_bad_settings_are_rejected(opts, fragment):
    with pytest.raises(ValueError, match=fragment):
        PolicyConfig(name="halving", **opts).validate(1000)


def test_make_policy_and_describe():
    cfg = PolicyConfig(name="halving")
    assert cfg.describe() == "halving(rounds=[2, 4, 12], keep=[10, 3, 1], t_band=[0.15, 0.6])"
    assert halving_evaluations(100, cfg.rounds, cfg.keep) == 244 and halving_evaluations(10, cfg.rounds, cfg.keep) == 64
    assert isinstance(make_policy(cfg, 10, 1000, NoiseBank((1,), 0), key=1), HalvingPolicy)
