"""The offline replay must be the halving policy itself: same label, finalists and means on the same errors."""

import numpy as np
import pytest

from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import HalvingPolicy, halving_evaluations
from diffcls_fast.tune.replay import Rule, band_points, bands, prefix_sums, replay, schedules, sweep


def _drive(table: np.ndarray, rounds, keep):
    """A real HalvingPolicy whose sample s of class c has error table[c, s], in odd-sized chunks."""
    c = table.shape[0]
    p = HalvingPolicy(c, 1000, NoiseBank((1,), 0), key=3, rounds=rounds, keep=keep)
    while not p.done:
        cls, smp = p.take(5, speculate=False)
        p.observe(cls, smp, table[cls, smp])
    return p.outcome()


@pytest.mark.parametrize("n_classes", [2, 7, 13])
@pytest.mark.parametrize(
    "rounds, keep", [((1,), (1,)), ((4,), (1,)), ((1, 3), (3, 1)), ((2, 4, 12), (5, 2, 1)), ((1, 2, 6), (10, 3, 1))]
)
def test_replay_gives_the_policys_label_finalists_and_means(n_classes, rounds, keep):
    rng = np.random.default_rng(n_classes * 100 + len(rounds))
    for _ in range(5):
        table = rng.gamma(2.0, 1.0, (n_classes, rounds[-1])) + rng.normal(0, 0.3, (n_classes, 1))
        pred, finalists, means = replay(np.cumsum(table, axis=1)[None, None], rounds, keep)
        o = _drive(table, rounds, keep)
        assert pred[0, 0] == o.label
        assert o.evaluations == halving_evaluations(n_classes, rounds, keep)
        final = o.n_scores == o.n_scores[o.label]
        assert np.array_equal(finalists[0, 0], final)
        np.testing.assert_allclose(means[0, 0][final], o.mean_errors[final], rtol=1e-12)


def test_prefix_sums_follow_a_permutation_of_the_band_per_image():
    rng = np.random.default_rng(0)
    errors = rng.random((6, 3, 10))
    points = np.array([2, 3, 5, 7])
    cums = prefix_sums(errors, points, repeats=2, seed=1)
    assert cums.shape == (2, 6, 3, 4)
    # the last prefix sum is the sum over the band, whatever the order
    np.testing.assert_allclose(cums[..., -1], np.broadcast_to(errors[:, :, points].sum(axis=2), (2, 6, 3)))
    assert not np.allclose(cums[0], cums[1])  # two orders


def test_band_points_are_the_grid_points_in_the_band():
    ts = np.arange(20, 1000, 40)  # li_grid(1000, 25)
    assert ts[band_points(ts, 1000, (0.15, 0.6))].tolist() == list(range(180, 600, 40))
    assert len(band_points(ts, 1000, (0.0, 1.0))) == 25


def test_schedules_fit_the_band_and_end_with_one_class():
    for c in (2, 10, 100):
        for rounds, keep in schedules(c, 12):
            assert rounds[-1] <= 12 and keep[-1] == 1 and list(rounds) == sorted(set(rounds))
            assert all(k < c for k in keep[:-1]) and list(keep) == sorted(keep, reverse=True)
    assert all(hi - lo >= 0.2 - 1e-9 for lo, hi in bands())


def test_schedules_on_a_fine_grid_include_li_et_al_s_shape():
    """A few samples of every class, then many of the two or three that lead (Li et al.'s 5 50 / 2 1); the last
    round may take the band's whole grid, which is not a multiple of the first."""
    s50 = schedules(10, 50)
    assert ((5, 50), (2, 1)) in s50 and ((4, 12, 40), (3, 2, 1)) in s50
    assert ((3, 37), (2, 1)) in schedules(10, 37)  # the whole band
    assert all(r[-1] <= 25 for r, _ in schedules(10, 25)) and ((5, 50), (2, 1)) not in schedules(10, 25)
    assert {s for s in schedules(10, 25) if s[0][-1] < 25} <= set(s50)  # a finer grid only adds rules


def test_sweep_finds_the_informative_band():
    """Classes differ only at the middle timesteps of a 20-point grid: the best rules sit in that band."""
    rng = np.random.default_rng(0)
    n, c, g = 60, 5, 20
    labels = rng.integers(0, c, n)
    errors = rng.random((n, c, g))
    mid = slice(6, 12)  # timesteps 325..575 of li_grid(1000, 20)
    errors[np.arange(n), labels, mid] -= 0.6
    ts = np.arange(25, 1000, 50)
    results = list(sweep(errors, labels, ts, 1000, repeats=2))
    best_acc = max(h.mean() for _, h in results)
    assert best_acc == 1.0
    cheap = min((r for r, h in results if h.mean() == 1.0), key=lambda r: r.evaluations(c))
    lo, hi = cheap.band
    assert 0.3 <= lo and hi <= 0.7, cheap.describe()
    assert isinstance(cheap, Rule)


def test_balanced_order_takes_the_classes_in_turn():
    from diffcls_fast.tune.run import balanced_order

    labels = np.array([0, 0, 0, 1, 1, 2])  # a folder read class after class
    order = balanced_order(labels)
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 0]
    assert order.tolist() == [0, 3, 5, 1, 4, 2]  # each class keeps its own order
