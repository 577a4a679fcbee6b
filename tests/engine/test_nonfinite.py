"""Termination: every policy finishes, every in-flight image gets a result, whatever the scores.

Non-finite scores (NaN/inf from a broken model or input) fail *that* image with an
error naming the first such score the rule consumed; the scheduler never stalls;
zero-variance t-tests are decided exactly. Pure Python, with the fake denoiser.
"""

from collections import Counter

import numpy as np
import pytest

from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import (
    Failure,
    Policy,
    PolicyConfig,
    StagedPolicy,
    TTestPolicy,
    make_policy,
    paired_t_pvalues,
)
from diffcls_fast.engine.scheduler import Scheduler, power_of_two_buckets

from .fakes import fake_errors

T = 1000
N_CLS = 10


def poisoned_errors(image, classes, samples, bad):
    """fake_errors, with ``bad[image] = (value, predicate(classes, samples) -> mask)`` replacing some scores."""
    e = fake_errors(image, classes, samples, true_class=image % N_CLS, n_classes=N_CLS)
    if image in bad:
        value, where = bad[image]
        e = np.where(where(classes, samples), value, e)
    return e


def drive(n_images, cfg, bad=None, batch_size=64, max_inflight=8, speculate="pad", extra=None):
    """Run the scheduler to completion; asserts it never stalls. Returns {image: outcome}, non-finite scores
    delivered."""
    bad = bad or {}
    bank = NoiseBank((1, 2, 2), seed=0)
    sched = Scheduler(power_of_two_buckets(batch_size), max_inflight, speculate)
    pols = {i: make_policy(cfg, N_CLS, T, bank, key=1000 + i) for i in range(n_images)}
    for i, p in pols.items():
        sched.add(i, p)
    for rid, p in (extra or {}).items():
        pols[rid] = p
        sched.add(rid, p)
    delivered = Counter()
    finished = []
    while sched.has_work:
        b = sched.schedule()
        if b is None:
            got = sched.retire()
            assert got, "stalled: in-flight policies neither done nor asking for work"
            finished += got
            continue
        errs = np.empty(b.n_queries)
        for idx, rid in enumerate(b.image_ids):
            m = b.image == idx
            errs[m] = poisoned_errors(rid, b.classes[m], b.samples[m], bad)
            delivered[rid] += int((~np.isfinite(errs[m])).sum())
        finished += sched.update(b, errs)
    assert sorted(finished, key=str) == sorted(pols, key=str)
    return {i: p.outcome() for i, p in pols.items()}, delivered


def _summary(o):
    f = o.failure
    if f is not None:
        return ("failed", f.sample, f.cls, str(f.value), o.evaluations)
    return (o.label, o.evaluations, np.nan_to_num(o.mean_errors, nan=-1.0).tolist())


CONFIGS = {
    "ttest": PolicyConfig(name="ttest", min_scores=5, cutoff_pval=1e-2),
    "adaptive": PolicyConfig(name="adaptive", n_samples=[5, 20], to_keep=[3, 1]),
    "exhaustive": PolicyConfig(name="exhaustive", n_grid=8),
}


@pytest.mark.parametrize("policy", list(CONFIGS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_fail_that_image_only(policy, value):
    bad = {
        1: (value, lambda c, s: np.ones(len(c), bool)),  # everything (NaN weights)
        4: (value, lambda c, s: (c == 7) & (s == 2)),  # one score of one class
        6: (value, lambda c, s: s == 0),  # the first sample of every class
    }
    clean, _ = drive(12, CONFIGS[policy])
    got, _ = drive(12, CONFIGS[policy], bad)
    for i in range(12):
        if i in bad:
            continue
        assert _summary(got[i]) == _summary(clean[i]), i  # other images are untouched
    assert got[1].failure.sample == 0 and got[1].failure.cls == 0
    assert got[6].failure.sample == 0 and got[6].failure.cls == 0
    msg = got[1].failure.message([f"c{k}" for k in range(N_CLS)])
    assert "non-finite denoiser error" in msg and "sample 0" in msg and "'c0'" in msg
    # Image 4's class 7 is far from its true class 4 only in the fake's ring metric (distance 3): whether the
    # rule ever consumes (7, 2) depends on the policy, but the outcome is the same everywhere (below).
    if got[4].failure is not None:
        assert (got[4].failure.sample, got[4].failure.cls) == (2, 7)


@pytest.mark.parametrize("policy", list(CONFIGS))
def test_failure_does_not_depend_on_batching_or_speculation(policy):
    bad = {
        2: (np.nan, lambda c, s: (s >= 3) & (c % 2 == 1)),
        5: (np.inf, lambda c, s: (c == 5) & (s == 11)),  # the true class, late: consumed iff the rule gets there
        9: (np.nan, lambda c, s: (c == 1) & (s >= 15)),  # a class the t-test drops early: never consumed
    }
    ref = None
    for bs, inflight, spec in [(8, 1, "none"), (64, 4, "pad"), (256, 64, "fill"), (16, 3, "fill")]:
        got, _ = drive(12, CONFIGS[policy], bad, batch_size=bs, max_inflight=inflight, speculate=spec)
        out = {i: _summary(o) for i, o in got.items()}
        if ref is None:
            ref = out
        assert out == ref, (bs, inflight, spec)
    assert ref[2][0] == "failed"


def test_ttest_ignores_non_finite_scores_it_never_consumes():
    # The t-test drops class 1 of image 9 after 7 samples; a lone image's speculation scores it further.
    clean, _ = drive(10, CONFIGS["ttest"], speculate="fill", batch_size=64, max_inflight=1)
    o = clean[9]
    assert o.n_scores[1] == 7
    got, delivered = drive(
        10,
        CONFIGS["ttest"],
        {9: (np.nan, lambda c, s: (c == 1) & (s >= 7))},
        speculate="fill",
        batch_size=64,
        max_inflight=1,
    )
    assert delivered[9] > 0  # NaN scores did arrive...
    assert _summary(got[9]) == _summary(o)  # ...and changed nothing


def test_ttest_fails_where_the_rule_consumes_the_first_non_finite_score():
    p = TTestPolicy(3, lambda i: 500, min_scores=3, max_scores=50)
    c, s = p.take(9)
    e = np.ones(len(c))
    e[(c == 2) & (s == 2)] = np.nan
    e[(c == 1) & (s == 1)] = np.inf  # earlier in the rule's order: this one is reported
    p.observe(c, s, e)
    assert p.done and p.take(100)[0].size == 0
    f = p.outcome().failure
    assert (f.sample, f.cls, f.value) == (1, 1, np.inf)
    assert p.outcome().evaluations == 3  # sample 0 was consumed, for 3 classes


def test_staged_fails_at_stage_close_naming_the_first_score_in_rule_order():
    p = StagedPolicy(4, T, [4, 8], [2, 1])
    c, s = p.take(100)
    e = np.ones(len(c))
    e[(c == 3) & (s == 0)] = np.nan
    e[(c == 1) & (s == 2)] = np.nan
    p.observe(c[:5], s[:5], e[:5])
    assert not p.done  # the stage is not complete: the rule has consumed nothing yet
    p.observe(c[5:], s[5:], e[5:])
    assert p.done
    f = p.outcome().failure
    assert (f.sample, f.cls) == (0, 3)


class _Stuck(Policy):
    """A buggy policy: never done, never asks for work."""

    name = "stuck"

    def timestep(self, sample):
        return 0

    def demand(self):
        return 0

    def take(self, budget, speculate=False):
        return np.empty(0, np.int64), np.empty(0, np.int64)

    def _advance(self):
        pass

    def outcome(self):
        from diffcls_fast.engine.policies import Outcome

        return Outcome(0, np.full(self.n_classes, np.nan), np.zeros(self.n_classes, np.int64), 0, self.failure)


def test_a_stalled_policy_fails_its_image_not_the_run():
    sched = Scheduler([8, 16], max_inflight=2, speculate="pad")
    good = make_policy(CONFIGS["ttest"], N_CLS, T, NoiseBank((1, 2, 2)), key=1)
    stuck = _Stuck(N_CLS)
    sched.add("stuck", stuck)
    sched.add("good", good)
    finished = []
    while sched.has_work:
        b = sched.schedule()
        if b is None:
            got = sched.retire() or sched.fail_stalled()
            assert got
            finished += got
            continue
        errs = np.concatenate(
            [
                fake_errors(1, b.classes[b.image == k], b.samples[b.image == k], 1, N_CLS)
                for k in range(len(b.image_ids))
            ]
        )
        finished += sched.update(b, errs)
    assert sorted(finished) == ["good", "stuck"]
    assert good.failure is None and good.outcome().label == 1
    assert stuck.failure.reason == "internal" and "stalled" in stuck.failure.message()


@pytest.mark.parametrize("policy", list(CONFIGS))
def test_no_policy_ever_stalls_the_scheduler(policy):
    # The safety net above must stay unused: random NaN/inf anywhere, every speculation mode.
    rng = np.random.default_rng(0)
    for _ in range(2):
        keys = rng.integers(0, 1 << 30, 3)
        bad = {
            int(i): (float(rng.choice([np.nan, np.inf])), lambda c, s, k=int(k): ((c * 131 + s * 7 + k) % 23) == 0)
            for i, k in zip(rng.choice(12, 3, replace=False), keys)
        }
        for spec in ("none", "pad", "fill"):
            drive(
                12, CONFIGS[policy], bad, batch_size=32, max_inflight=5, speculate=spec
            )  # asserts: no stall, all finish


def test_scheduler_rejects_non_positive_inflight():
    with pytest.raises(ValueError, match="max_inflight"):
        Scheduler([8], max_inflight=0)
    with pytest.raises(ValueError, match="bucket"):
        Scheduler([0, 8])


# -- the paired t-test on zero-variance differences ------------------------------------------------


def test_zero_variance_pvalues_are_exact():
    d = np.array(
        [
            [0.0] * 5,  # identical scores: no evidence
            [0.1] * 5,  # a constant positive difference (0.1 is inexact: numpy's std is not 0 here)
            [-0.3] * 5,  # a constant negative one
            [2.0**-1070] * 5,  # denormal constant
        ]
    )
    assert paired_t_pvalues(d, sides=2).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert paired_t_pvalues(d, sides=1).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_pvalues_never_nan():
    rng = np.random.default_rng(1)
    rows = [
        np.zeros(7),
        np.full(7, 1e300),
        np.array([1e-320, -1e-320] * 3 + [0.0]),  # spread underflows
        np.array([1e308, -1e308, 1e308, -1e308, 0, 0, 0]),  # overflows the variance
        rng.normal(size=7),
    ]
    for sides in (1, 2):
        p = paired_t_pvalues(np.stack(rows), sides=sides)
        assert np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all(), p
    assert paired_t_pvalues(np.zeros((2, 1))).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="finite"):
        paired_t_pvalues(np.array([[0.0, np.nan, 1.0]]))


def test_identical_scores_are_never_dropped_and_constant_gaps_are():
    # Two classes scoring identically can only be stopped by max_scores (the classifier refuses such classes
    # up front); a class worse by a constant is dropped at min_scores.
    def run(offsets):
        p = TTestPolicy(3, lambda i: 500, min_scores=4, max_scores=30)
        while not p.done:
            c, s = p.take(3)
            p.observe(c, s, 1.0 + 0.1 * np.sin(s) + np.asarray(offsets)[c])
        return p.outcome()

    o = run([0.0, 0.0, 0.5])
    assert o.n_scores.tolist() == [30, 30, 4] and o.label == 0
    o = run([0.0, 0.25, 0.5])
    assert o.n_scores.tolist() == [4, 4, 4] and o.label == 0


def test_failure_messages():
    assert Failure("internal", "x").message() == "internal error: x"
    assert "class 'b'" in Failure("non-finite", sample=3, cls=1, value=float("nan")).message(["a", "b"])


def test_nan_weights_fail_each_image_with_a_message_not_a_wrong_label():
    from pathlib import Path

    import torch

    from diffcls_fast import DiffusionClassifier, load_model

    model = load_model("digits")
    with torch.no_grad():
        next(model.network.parameters()).view(-1)[0] = float("nan")
    examples = Path(__file__).resolve().parents[2] / "examples"
    res = DiffusionClassifier(model, "ttest", use_cache=False).classify(
        [examples / "digit-7.png", examples / "digit-3.png"]
    )
    for r in res:
        assert r.label == -1 and r.label_name == "" and "non-finite" in r.error
        assert r.to_dict()["error"] == r.error and not r.probabilities.any() and r.top() == []
