"""The engine core: many requests (class lists, policies, seeds) in one scheduler give each its own classify result."""

import numpy as np
import pytest
import torch

from diffcls_fast import ClassSpec, DiffusionClassifier, load_model
from diffcls_fast.data.digits import load_split
from diffcls_fast.engine.core import ConditionTable
from diffcls_fast.errors import UserError


@pytest.fixture(scope="module")
def clf():
    return DiffusionClassifier(load_model("digits", device="cpu"), "halving", batch_size=64, use_cache=False)


@pytest.fixture(scope="module")
def digits():
    pil, y, _ = load_split("heldout")
    return pil[:4], y[:4]


def assert_same(a, b):
    """Labels, counts and evaluations exactly; mean errors within the batch-composition tolerance (docs/performance.md,
    Determinism)."""
    assert (a.label, a.label_name, a.class_names, a.evaluations, a.error) == (
        b.label,
        b.label_name,
        b.class_names,
        b.evaluations,
        b.error,
    )
    np.testing.assert_array_equal(a.n_scores, b.n_scores)
    np.testing.assert_allclose(
        np.nan_to_num(a.mean_errors, nan=-1), np.nan_to_num(b.mean_errors, nan=-1), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-4, atol=1e-6)


def test_requests_with_different_classes_policies_and_seeds_share_batches_and_match_classify(clf, digits):
    pil, _ = digits
    ens = ClassSpec(
        ["one", "seven", "nine"],
        ["a handwritten digit one", "the number 1", "a handwritten digit seven", "a handwritten digit nine"],
        [np.array([0, 1]), np.array([2]), np.array([3])],
    )
    configs = [
        (None, clf),  # the model's ten classes, halving, seed 0
        (["one", "seven", "three"], clf.with_options(seed=5)),
        (ens, clf.with_options(policy="exhaustive", n_grid=4, seed=2)),  # a prompt ensemble, another policy
        (
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
            clf.with_options(policy="ttest", min_scores=4, max_scores=12, temperature=0.02),
        ),
    ]
    expected = [view.classify(pil, classes) for classes, view in configs]
    engine = clf.engine()
    reqs = [
        engine.submit(pil, classes, options=view.options, chunk=2) for classes, view in configs
    ]  # small chunks: requests interleave
    got = {id(r): [None] * len(pil) for r in reqs}
    mixed = 0
    while engine.has_work:
        live_rows = {id(st.conditions) for st in engine.states.values()}
        mixed = max(mixed, len(live_rows))
        for req, i, r in engine.step():
            got[id(req)][i] = r
    assert mixed >= 2, "the requests never shared the engine"
    for req, exp in zip(reqs, expected):
        assert req.done
        for r, e in zip(got[id(req)], exp):
            assert_same(r, e)
    assert engine.table.live_rows == 0  # every request released its condition rows


def test_cancel_removes_the_requests_queries_and_frees_its_rows(clf, digits):
    pil, _ = digits
    engine = clf.engine()
    slow = engine.submit(pil, None, options=clf.with_options(policy="exhaustive", n_grid=50).options)
    fast = engine.submit(pil[:2], ["one", "seven"])
    engine.step()
    assert slow.inputs > 0 and any(r is slow for r, _ in engine._owner.values())
    engine.cancel(slow)
    assert slow.done and not any(r is slow for r, _ in engine._owner.values())
    assert set(engine.table.row_of) == {"a handwritten digit one", "a handwritten digit seven"}
    served = set()
    while engine.has_work:
        for req, i, _ in engine.step():
            served.add((req.id, i))
    assert served == {(fast.id, 0), (fast.id, 1)}
    assert engine.stats.rows < 10 * 50 * len(pil)  # the cancelled request's 3,000 evaluations were never run


def test_a_bad_class_list_fails_its_submit_only(clf, digits):
    pil, _ = digits
    engine = clf.engine()
    ok = engine.submit(pil[:1], ["one", "seven"])
    with pytest.raises(UserError, match="identical prompt embeddings"):
        engine.submit(pil[:1], ["cat", "dog"])  # both encode as [UNK]
    with pytest.raises(UserError, match="duplicate"):
        engine.submit(pil[:1], ["one", "one"])
    out = []
    while engine.has_work:
        out += engine.step()
    assert [(r is ok, i) for r, i, _ in out] == [(True, 0)]


def test_with_options_equals_a_classifier_built_with_the_same_arguments(clf, digits):
    pil, _ = digits
    m = clf.model
    view = clf.with_options(policy="exhaustive", n_grid=3, seed=7)
    built = DiffusionClassifier(m, "exhaustive", n_grid=3, seed=7, batch_size=64, use_cache=False)
    assert (view.temperature, view.posterior_floor, view.policy_cfg) == (
        built.temperature,
        built.posterior_floor,
        built.policy_cfg,
    )
    for a, b in zip(view.classify(pil[:2]), built.classify(pil[:2])):
        assert_same(a, b)
    t = clf.with_options(temperature=0.05)
    assert (t.temperature, t.posterior_floor) == (0.05, 0.0)  # as DiffusionClassifier(temperature=0.05)
    assert (
        clf.with_options(policy="ttest").temperature == DiffusionClassifier(m, "ttest").temperature
    )  # the new policy's calibration
    with pytest.raises(TypeError):
        clf.with_options(nope=1)
    with pytest.raises(UserError):
        clf.with_options(seed=-1)


def test_condition_table_reuses_rows_and_grows():
    t = ConditionTable()
    a = t.acquire(["x", "y"], torch.tensor([[1.0], [2.0]]))
    b = t.acquire(["y", "z"], torch.tensor([[2.0], [3.0]]))
    assert a[1] == b[0] and len({*a, *b}) == 3
    t.release(["x", "y"])
    assert set(t.row_of) == {"y", "z"}
    many = [f"p{k}" for k in range(20)]
    rows = t.acquire(many, torch.arange(20, dtype=torch.float32)[:, None])
    assert len(set(rows)) == 20 and len(t.tensor) >= 22
    assert [float(t.tensor[r, 0]) for r in rows] == list(range(20))
    assert float(t.tensor[t.row_of["z"], 0]) == 3.0  # survived the growth
