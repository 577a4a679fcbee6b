import numpy as np
import pytest
from scipy import stats

from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import (
    PolicyConfig,
    StagedPolicy,
    TTestPolicy,
    make_policy,
    paired_t_pvalues,
    stage_evaluations,
)
from diffcls_fast.engine.timesteps import StratifiedTimesteps, li_grid, radical_inverse

from .fakes import run_policy


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 3, 20, 137])
def test_ttest_pvalues_match_scipy(seed, n):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (7, n))
    b = a + rng.normal(rng.normal(0, 0.3, (7, 1)), 1, (7, n))
    mine2 = paired_t_pvalues(b - a, sides=2)
    mine1 = paired_t_pvalues(b - a, sides=1)
    for k in range(7):
        np.testing.assert_allclose(mine2[k], stats.ttest_rel(b[k], a[k]).pvalue, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(
            mine1[k], stats.ttest_rel(b[k], a[k], alternative="greater").pvalue, rtol=1e-9, atol=1e-300
        )


def test_ttest_pvalue_degenerate_rows():
    p = paired_t_pvalues(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert p[0] == 1.0 and p[1] == 0.0


# Li et al.'s published settings and the counts the official code spends (see docs/policies.md).
@pytest.mark.parametrize(
    "n_classes, n_samples, to_keep, expected",
    [
        (10, [50, 500], [5, 1], 2750),  # CIFAR-10
        (37, [25, 250], [5, 1], 2050),  # Pets
        (101, [20, 50, 100, 500], [20, 10, 5, 1], 5570),  # Food-101
        (1000, [50, 100, 500, 1000], [500, 50, 10, 1], 124500),  # ImageNet
    ],
)
def test_adaptive_stage_arithmetic(n_classes, n_samples, to_keep, expected):
    assert stage_evaluations(1000, n_samples, to_keep, n_classes) == expected


def test_li_grid():
    assert li_grid(1000, 50)[:3].tolist() == [10, 30, 50]
    assert len(li_grid(1000, 500)) == 500 and li_grid(1000, 500)[0] == 1
    assert li_grid(1000, 1000).tolist() == list(range(1000))


def test_adaptive_policy_spends_the_documented_count_and_finds_the_class():
    p = StagedPolicy(10, 1000, [50, 500], [5, 1])
    o = run_policy(p, 3, 10, chunk=64)
    assert o.label == 3 and o.evaluations == 2750
    assert int(o.n_scores[3]) == 500


def test_adaptive_timesteps_follow_the_grid_in_first_use_order():
    p = StagedPolicy(10, 1000, [50, 500], [5, 1])
    assert [p.timestep(i) for i in range(3)] == [11, 31, 51]  # grid 1,3,5,...; stage 1 takes indices 5,15,25
    assert sorted(p.timestep(i) for i in range(500)) == li_grid(1000, 500).tolist()


def test_ttest_prunes_and_stops_early():
    bank = NoiseBank((1,), 0)
    p = TTestPolicy(10, StratifiedTimesteps(1000, bank, 1))
    o = run_policy(p, 6, 10)
    assert o.label == 6
    assert o.evaluations < 10 * 200
    assert int(o.n_scores[6]) == p.n
    assert (o.n_scores[o.n_scores > 0] >= 20).all()


def test_ttest_max_scores_stops_when_classes_tie():
    bank = NoiseBank((1,), 0)
    p = TTestPolicy(3, StratifiedTimesteps(1000, bank, 1), min_scores=2, max_scores=30)
    while not p.done:
        c, s = p.take(100)
        p.observe(c, s, np.ones(len(c)))
    o = p.outcome()
    assert p.n == 30 and o.evaluations == 90 and o.label == 0


def test_stratified_prefixes_hit_every_stratum():
    assert [radical_inverse(i) for i in range(4)] == [0.0, 0.5, 0.25, 0.75]
    st = StratifiedTimesteps(1000, NoiseBank((1,), 3), key=42)
    for k in (2, 4, 8, 16, 32):
        strata = {st(i) * k // 1000 for i in range(k)}
        assert strata == set(range(k))


def test_single_class_needs_no_evaluations():
    for name in ("ttest", "adaptive", "exhaustive"):
        p = make_policy(PolicyConfig(name=name), 1, 1000, NoiseBank((1,), 0), 0)
        assert p.done and p.demand() == 0 and p.outcome().label == 0


BAD_STAGES = [
    dict(n_samples=[50, 500], to_keep=[5]),
    dict(n_samples=[500, 50], to_keep=[5, 1]),
    dict(n_samples=[50, 500], to_keep=[5, 2]),
    dict(n_samples=[50, 5000], to_keep=[5, 1]),
]


@pytest.mark.parametrize("bad", BAD_STAGES)
def test_bad_adaptive_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        PolicyConfig(name="adaptive", **bad).validate(1000)


def test_policy_options_as_numpy_arrays_or_tuples_are_plain_lists_after_validation():
    """np.array([5, 20]) is as good a list option as [5, 20] (it used to fail on `not n_samples`)."""
    cfg = PolicyConfig(
        "adaptive", n_samples=np.array([5, 20]), to_keep=(2, 1), n_grid=np.int64(10), t_band=np.array([0.1, 0.5])
    )
    cfg.validate(1000)
    assert cfg.n_samples == [5, 20] and cfg.to_keep == [2, 1] and cfg.t_band == [0.1, 0.5] and type(cfg.n_grid) is int
    halving = PolicyConfig("halving", rounds=np.array([2, 4, 12]), keep=np.array([10, 3, 1]))
    halving.validate(1000)
    assert halving.describe() == "halving(rounds=[2, 4, 12], keep=[10, 3, 1], t_band=[0.15, 0.6])"
