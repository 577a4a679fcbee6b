"""The posterior agrees with the label: its top class is the label, over the classes of the final comparison."""

import numpy as np
import pytest
from PIL import Image

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import StagedPolicy, TTestPolicy, exhaustive
from diffcls_fast.engine.results import ClassificationResult, finalists, posterior
from diffcls_fast.engine.timesteps import RandomTimesteps


def _random_policy(rng: np.random.Generator, n_classes: int):
    kind = rng.integers(3)
    if kind == 0:
        lo = int(rng.integers(2, 10))
        t = RandomTimesteps(1000, NoiseBank((1,), 0), int(rng.integers(1 << 40)))
        return TTestPolicy(
            n_classes, t, lo, lo + int(rng.integers(0, 50)), float(rng.uniform(1e-3, 0.3)), int(rng.integers(1, 3))
        )
    if kind == 1:
        n_stages = int(rng.integers(1, 4))
        n_samples = sorted(int(v) for v in rng.integers(1, 40, n_stages))
        to_keep = sorted((int(v) for v in rng.integers(1, n_classes + 1, n_stages - 1)), reverse=True) + [1]
        return StagedPolicy(n_classes, 1000, n_samples, to_keep)
    return exhaustive(n_classes, 1000, int(rng.integers(1, 20)))


def _drive(policy, rng: np.random.Generator, n_classes: int):
    """Random errors: a shared per-sample level, close class offsets and large per-query noise, so
    pruned classes often end with a lower mean (over fewer samples) than the winner."""
    offset = rng.normal(0.0, 0.05, n_classes)
    shared = rng.exponential(1.0, 10_000)
    while not policy.done:
        c, s = policy.take(int(rng.integers(1, 40)), speculate=bool(rng.integers(2)))
        assert len(c), "policy stalled"
        policy.observe(c, s, shared[s] + offset[c] + rng.normal(0.0, 0.3, len(c)))
    return policy.outcome()


def _check(result: ClassificationResult) -> None:
    p = result.probabilities
    assert int(np.argmax(p)) == result.label, (result.label, p, result.mean_errors, result.n_scores)
    assert result.top(1)[0][0] == result.label_name
    assert np.isclose(p.sum(), 1.0) and (p >= 0).all()
    pruned = p[result.n_scores < result.n_scores[result.label]]
    assert (
        np.allclose(pruned, pruned[0] if len(pruned) else 0) and (pruned <= p.min() + 1e-12).all()
    )  # the floor's share, equal for all


def test_label_is_the_posterior_top_class_for_every_policy():
    rng = np.random.default_rng(0)
    pruned_lower = 0  # cases where a pruned class's mean beats the label's: the old posterior got these wrong
    for _ in range(400):
        n_classes = int(rng.integers(2, 12))
        o = _drive(_random_policy(rng, n_classes), rng, n_classes)
        temperature = float(10 ** rng.uniform(-6, 1))
        names = [f"c{i}" for i in range(n_classes)]
        probs = posterior(o.mean_errors, o.n_scores, o.label, temperature)
        _check(
            ClassificationResult(
                o.label, names[o.label], names, probs, o.mean_errors, o.n_scores, o.evaluations, o.evaluations, 0.0
            )
        )
        pruned_lower += bool(np.nanmin(o.mean_errors) < o.mean_errors[o.label])
    assert pruned_lower > 20  # the property was exercised where it used to fail


def test_finalists_are_the_classes_scored_as_often_as_the_label():
    n_scores = np.array([20, 35, 0, 35, 12])
    assert finalists(n_scores, 1).tolist() == [False, True, False, True, False]
    p = posterior(np.array([0.1, 0.5, np.nan, 0.6, 0.2]), n_scores, 1, 0.1)
    assert p[[0, 2, 4]].tolist() == [0, 0, 0]
    np.testing.assert_allclose(p[[1, 3]], np.exp([0, -1]) / np.exp([0, -1]).sum())


def test_top_lists_pruned_classes_last_pruned_first():
    names = ["a", "b", "c", "d"]
    r = ClassificationResult(
        2,
        "c",
        names,
        np.array([0.0, 0.0, 0.9, 0.1]),
        np.array([0.1, 0.3, 0.5, 0.6]),
        np.array([5, 9, 20, 20]),
        0,
        0,
        0.0,
    )
    assert [n for n, _ in r.top(4)] == ["c", "d", "b", "a"]


@pytest.mark.slow
def test_label_is_the_posterior_top_class_on_out_of_distribution_images():
    """The bundled model on noise, flat colours and a 1x1 image: ambiguous images, pruned classes with few scores."""
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        Image.new("L", (8, 8), 200),
        Image.new("L", (1, 1), 90),
    ]
    model = load_model("digits", device="cpu")
    for policy, opts in [
        ("ttest", dict(min_scores=3, max_scores=12, cutoff_pval=0.1)),
        ("adaptive", dict(n_samples=[4, 8], to_keep=[3, 1])),
    ]:
        clf = DiffusionClassifier(model, policy, use_cache=False, **opts)
        for r in clf.classify(images, ["zero", "three", "five", "eight", "nine"]):
            _check(r)


def test_posterior_stays_finite_at_extreme_temperatures():
    """-mean / T overflowed to -inf at T = 1e-310 and every probability became NaN."""
    from diffcls_fast.engine.results import posterior

    means, n = np.array([0.31, 0.30, 0.5]), np.array([4, 4, 4])
    for t in (1e-310, 5e-324, 1e-3, 1e300):
        p = posterior(means, n, 1, t, 0.0)
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-12 and p[1] == p.max()
    np.testing.assert_allclose(posterior(means, n, 1, 1e-310, 0.0), [0, 1, 0])
    np.testing.assert_allclose(posterior(means, n, 1, 0.01, 0.0), np.exp(-means / 0.01) / np.exp(-means / 0.01).sum())
