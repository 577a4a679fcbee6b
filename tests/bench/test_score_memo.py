"""bench/score_memo.py: a sweep that answers repeated queries from memory picks what plain runs pick."""

import numpy as np
import pytest

from bench.score_memo import MemoClassifier, ScoreMemo
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.evaluate import load_eval_split


@pytest.fixture(scope="module")
def digits():
    model = load_model("digits", device="cpu")
    images, labels, names, _ = load_eval_split("digits", "heldout")
    return model, images[:6], names


def _same(memo_res, plain_res):
    assert [r.label for r in memo_res] == [r.label for r in plain_res]
    assert [r.evaluations for r in memo_res] == [r.evaluations for r in plain_res]
    for m, p in zip(memo_res, plain_res):
        np.testing.assert_allclose(m.mean_errors, p.mean_errors, rtol=1e-5, atol=1e-7)


def test_stricter_ttest_first_answers_the_looser_one_from_memory(digits):
    """The t-tests of one sample sequence: the looser cutoff asks (almost) only queries the stricter one asked."""
    model, images, names = digits
    memo = ScoreMemo()
    strict = MemoClassifier(model, "ttest", cutoff_pval=1e-4, batch_size=64, use_cache=False, memo=memo).classify(
        images, names
    )
    asked = memo.misses
    assert memo.hits == 0 and asked == sum(r.evaluations_spent for r in strict)
    loose = MemoClassifier(model, "ttest", cutoff_pval=1e-2, batch_size=64, use_cache=False, memo=memo).classify(
        images, names
    )
    assert memo.hits > 0 and memo.misses - asked < 0.1 * sum(r.evaluations for r in loose)
    _same(
        strict,
        DiffusionClassifier(model, "ttest", cutoff_pval=1e-4, batch_size=64, use_cache=False).classify(images, names),
    )
    _same(
        loose,
        DiffusionClassifier(model, "ttest", cutoff_pval=1e-2, batch_size=64, use_cache=False).classify(images, names),
    )


def test_other_families_and_batch_sizes_never_share_a_wrong_answer(digits):
    """Different policies map sample i to different timesteps: the memo keys on the timestep too, so an
    exhaustive grid, an adaptive schedule and a halving run in one memo each get their own answers."""
    model, images, names = digits
    memo = ScoreMemo()
    for policy, opts in [
        ("exhaustive", dict(n_grid=5)),
        ("adaptive", dict(n_samples=[5, 25], to_keep=[3, 1])),
        ("halving", {}),
    ]:
        got = MemoClassifier(model, policy, batch_size=32, use_cache=False, memo=memo, **opts).classify(images, names)
        _same(got, DiffusionClassifier(model, policy, batch_size=64, use_cache=False, **opts).classify(images, names))
    assert memo.hits > 0  # the adaptive schedule's stage 2 repeats grid points, and halving rounds overlap


def test_a_repeated_run_runs_nothing(digits):
    """Every query known: no denoiser call at all (batches whose images all drop out), same answers."""
    model, images, names = digits
    memo = ScoreMemo()
    first = MemoClassifier(model, "halving", batch_size=64, use_cache=False, memo=memo).classify(images, names)
    asked = memo.misses
    again = MemoClassifier(model, "halving", batch_size=64, use_cache=False, memo=memo, seed=0).classify(images, names)
    assert memo.misses == asked
    _same(again, first)
    other_seed = MemoClassifier(model, "halving", batch_size=64, use_cache=False, memo=memo, seed=1).classify(
        images, names
    )
    assert memo.misses > asked  # another seed draws other noise: nothing of it is known
    _same(
        other_seed,
        DiffusionClassifier(model, "halving", batch_size=64, use_cache=False, seed=1).classify(images, names),
    )
