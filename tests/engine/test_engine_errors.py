"""The bundled model with broken inputs: non-finite weights, inputs, noise and embeddings; bad scheduler
arguments; classes the model cannot tell apart; unknown words; batch-size tolerance."""

import argparse
import json
import warnings

import numpy as np
import pytest
import torch

from diffcls_fast import ClassSpec, DiffusionClassifier, UserError, load_model
from diffcls_fast.data.digits import load_split
from diffcls_fast.engine.cache import EmbeddingCache
from diffcls_fast.engine.options import embedding_key
from diffcls_fast.errors import DiffclsWarning

pytestmark = pytest.mark.slow
FAST = dict(use_cache=False, batch_size=32, min_scores=3, max_scores=40)


@pytest.fixture(scope="module")
def model():
    return load_model("digits", device="cpu")


@pytest.fixture(scope="module")
def nan_model():
    m = load_model("digits", device="cpu")
    with torch.no_grad():
        m.network.conv_out.weight.view(-1)[0] = float("nan")
    return m


@pytest.fixture(scope="module")
def pil():
    return load_split("heldout")[0]


# -- non-finite values: the image fails, the run goes on ------------------------------------------------


@pytest.mark.parametrize("policy", ["ttest", "exhaustive"])
def test_nan_weight_fails_every_image_without_raising(nan_model, pil, policy):
    clf = DiffusionClassifier(nan_model, policy, n_grid=2, **FAST)
    got = dict(clf.classify_iter(pil[:3]))
    assert sorted(got) == [0, 1, 2]
    for r in got.values():
        assert r.label == -1 and r.label_name == "" and not r.ok and r.top() == []
        assert r.error.startswith("non-finite denoiser error (nan) at sample 0, class 'zero'")
        assert r.evaluations_spent > 0
        row = r.to_dict()
        assert row["error"] == r.error and row["label"] == "" and row["top"] == []
        json.loads(json.dumps(row, allow_nan=False))  # strict JSON: no NaN/Infinity literals
    assert clf.last_stats.images == 3


def test_nan_input_tensor_fails_that_image_only(model, pil):
    x = torch.zeros(1, 8, 8)
    x[0, 2, 5] = float("nan")
    res = DiffusionClassifier(model, **FAST).classify([pil[0], x, pil[1]])
    assert res[0].ok and res[2].ok
    assert res[1].error and "NaN or inf" in res[1].error and res[1].evaluations_spent == 0
    alone = DiffusionClassifier(model, **FAST).classify([pil[0], pil[1]])
    assert [r.label for r in alone] == [res[0].label, res[2].label]
    assert [r.evaluations for r in alone] == [res[0].evaluations, res[2].evaluations]


def test_noise_tensor_with_a_nan_row_is_refused(model):
    noise = torch.randn(60, 1, 8, 8)
    noise[17, 0, 1, 1] = float("nan")
    with pytest.raises(UserError, match=r"row\(s\) 17 of 60"):
        DiffusionClassifier(model, noise=noise, use_cache=False)


def test_non_finite_cached_embedding_is_encoded_afresh(model, pil, tmp_path):
    names = ["zero", "one", "two"]
    prompts = [model.prompt_template.format(n) for n in names]

    def broken(ps):
        e = model.encode_prompts(ps)
        e[0, 0, 0] = float("inf")
        return e

    EmbeddingCache(tmp_path, embedding_key(model)).get(prompts, broken)  # a cache entry holding inf
    clf = DiffusionClassifier(model, cache_dir=tmp_path, **{k: v for k, v in FAST.items() if k != "use_cache"})
    r = clf.classify([pil[0]], names)[0]  # the cache does not trust the entry: it encodes afresh
    assert r.ok
    ref = DiffusionClassifier(model, **FAST).classify([pil[0]], names)[0]
    assert r.label == ref.label and np.array_equal(r.mean_errors, ref.mean_errors, equal_nan=True)


def test_non_finite_encoder_output_is_a_user_error(model, pil):
    import dataclasses

    def encode(ps):
        e = model.encode_prompts(ps)
        e[1] = float("nan")
        return e

    broken = dataclasses.replace(model, encode_prompts=encode)
    with pytest.raises(UserError, match="non-finite values .* for 'a handwritten digit one'"):
        DiffusionClassifier(broken, **FAST).classify([pil[0]], ["zero", "one"])


def test_eval_records_failed_rows_and_goes_on(nan_model, tmp_path):
    from diffcls_fast.evaluate import run_eval

    class _Bar:
        def update(self, n):
            pass

        def close(self):
            pass

    out = tmp_path / "eval.jsonl"
    a = argparse.Namespace(
        model="digits",
        split="heldout",
        data=None,
        prompts=None,
        limit=3,
        out=str(out),
        policy="ttest",
        seed=0,
        loss="l2",
        noise_path=None,
    )
    for k, v in dict(
        n_grid=50,
        n_samples=[50, 500],
        to_keep=[5, 1],
        min_scores=3,
        max_scores=40,
        cutoff_pval=2e-3,
        sides=2,
        t_order="stratified",
    ).items():
        setattr(a, k, v)
    summary = run_eval(a, lambda a: DiffusionClassifier(nan_model, **FAST), lambda n, d: _Bar())
    assert summary["images"] == 3 and summary["failed"] == 3 and summary["accuracy"] == 0.0
    assert summary["first_error"].startswith("non-finite denoiser error")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["correct"] == 0 and r["error"] for r in rows)


# -- scheduler arguments are validated at the boundary ------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-8), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(max_inflight=0), "max_inflight"),
        (dict(max_inflight=-1), "max_inflight"),
        (dict(buckets=[0, 8]), "buckets"),
        (dict(buckets=[8, -16]), "buckets"),
        (dict(buckets=[]), "buckets"),
        (dict(buckets="8"), "buckets"),
        (dict(speculate="always"), "speculate"),
    ],
)
def test_bad_scheduler_arguments_are_user_errors(model, kwargs, name):
    with pytest.raises(UserError, match=name):
        DiffusionClassifier(model, **kwargs)


def test_valid_odd_scheduler_arguments_are_accepted(model, pil):
    r = DiffusionClassifier(
        model,
        buckets=[3, np.int64(5)],
        max_inflight=np.int64(1),
        **{k: v for k, v in FAST.items() if k != "batch_size"},
    ).classify([pil[0]])
    assert r[0].ok


# -- classes the model cannot tell apart; words the tokenizer does not know --------------------------


@pytest.mark.parametrize(
    "classes, named",
    [
        (["cat", "dog", "seven"], "'cat', 'dog'; the digits tokenizer does not know 'cat', 'dog'"),
        (["seven", "Seven", "one"], "'seven', 'Seven'; their prompts encode to the same tokens"),
        (ClassSpec.from_prompts(["a", "b", "c"], ["the number 1", "the number 1", "the number 2"]), "'a', 'b'"),
    ],
)
def test_identical_classes_are_refused(model, pil, classes, named):
    with pytest.raises(UserError, match="identical prompt embeddings") as e:
        DiffusionClassifier(model, **FAST).classify([pil[0]], classes)
    assert named in str(e.value)


def test_identical_prompt_ensembles_are_refused_but_overlapping_ones_are_not(model, pil):
    same = ClassSpec(
        ["a", "b", "c"],
        ["the number 1", "a handwritten digit one", "the number 2"],
        [np.array([0, 1]), np.array([0, 1]), np.array([2])],
    )
    with pytest.raises(UserError, match="'a', 'b'"):
        DiffusionClassifier(model, **FAST).classify([pil[0]], same)
    overlap = ClassSpec(["a", "b", "c"], same.prompts, [np.array([0, 1]), np.array([0]), np.array([2])])
    assert DiffusionClassifier(model, **FAST).classify([pil[0]], overlap)[0].ok


def test_an_ensemble_larger_than_the_batch_is_refused_not_stalled(model, pil):
    """A class is scored with all its prompts in one batch: 3 prompts at batch size 2 could never run
    (every policy stalled and failed the image as an internal bug). Now a UserError before scoring."""
    spec = ClassSpec(
        ["zero", "seven"],
        ["the number 0", "a handwritten digit zero", "the digit zero", "the number 7"],
        [np.array([0, 1, 2]), np.array([3])],
    )
    for policy in ("ttest", "halving", "exhaustive", "adaptive"):
        with pytest.raises(
            UserError, match=r"class 'zero' has 3 prompts, more than the largest denoiser batch \(2 rows\).*at least 3"
        ):
            DiffusionClassifier(model, policy, use_cache=False, batch_size=2).classify([pil[0]], spec)
    assert (
        DiffusionClassifier(model, "exhaustive", use_cache=False, batch_size=3, n_grid=4).classify([pil[0]], spec)[0].ok
    )
    with pytest.raises(UserError, match="must be a 1-D list of prompt ids"):
        ClassSpec(["zero", "seven"], spec.prompts, [np.array([[0, 1]]), np.array([3])]).validate()


def test_unknown_words_warn_once_naming_them(model, pil):
    with pytest.warns(DiffclsWarning, match=r"does not know 'cat' \(class 'cat'\) and encodes it as \[UNK\]"):
        r = DiffusionClassifier(model, **FAST).classify([pil[0]], ["cat", "zero", "one"])[0]
    assert r.ok
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffclsWarning)
        DiffusionClassifier(model, **FAST).classify([pil[0]], ["zero", "One", "two"])  # known words (any case): silent


# -- batch size: the documented tolerance --------------------------------------------------------------


def test_batch_size_changes_mean_errors_only_in_the_last_bits(model, pil):
    # docs/performance.md, "Determinism": the CPU BLAS picks GEMM kernels by batch rows (the timestep-embedding MLP), so
    # buckets below 16 rows can differ from larger ones in the last float32 bits; labels and counts do not.
    imgs = pil[:3]
    ref = DiffusionClassifier(model, batch_size=64, **{k: v for k, v in FAST.items() if k != "batch_size"}).classify(
        imgs
    )
    for kw in (dict(batch_size=3), dict(buckets=[5, 7])):
        got = DiffusionClassifier(model, **kw, **{k: v for k, v in FAST.items() if k != "batch_size"}).classify(imgs)
        for a, b in zip(got, ref):
            assert a.label == b.label and a.evaluations == b.evaluations
            assert np.array_equal(a.n_scores, b.n_scores)
            np.testing.assert_allclose(a.mean_errors, b.mean_errors, rtol=1e-6, atol=1e-7)


def test_match_with_nan_weights_reports_failed_images_not_nan_scores(nan_model, pil):
    res = DiffusionClassifier(nan_model, use_cache=False).match(
        pil[:2], ["a handwritten digit one", "a handwritten digit two"], n_grid=2
    )
    assert res.failed == 2 and all("non-finite" in f for f in res.failures)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # strict JSON: failed rows are null
    assert d["errors"] == [[None, None], [None, None]] and d["failures"] == res.failures


def test_match_allows_captions_that_encode_alike(model, pil):
    # 'cat' and 'dog' are both [UNK] to the digits tokenizer: classify refuses them, match scores them alike.
    with pytest.warns(DiffclsWarning, match="does not know 'cat', 'dog'"):
        res = DiffusionClassifier(model, use_cache=False).match(pil[:1], ["a cat", "a dog"], n_grid=2)
    assert res.errors[0, 0] == res.errors[0, 1] and not res.failed


def test_saved_noise_too_short_for_the_policy_is_refused_up_front(model, pil):
    """Sample i uses row i: a policy that may use more samples than the file has rows is refused when
    the classifier (or a view) is made, naming the option, instead of failing some images halfway
    (which ones would depend on how far each image's rule runs, and on speculation)."""
    noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cases = [
        (dict(policy="exhaustive", n_grid=50), "may use up to 50 samples", "--n-grid"),
        (dict(policy="ttest"), "may use up to 2000 samples", "--max-scores"),
        (dict(policy="adaptive", n_samples=[10, 20], to_keep=[3, 1]), "may use up to 20 samples", "--n-samples"),
        (dict(policy="halving", rounds=[2, 4, 20], keep=[5, 2, 1]), "may use up to 20 samples", "--rounds"),
    ]
    for opts, msg, option in cases:
        with pytest.raises(UserError) as e:
            DiffusionClassifier(model, noise=noise, use_cache=False, **opts)
        assert (
            "saved noise has 16 rows" in str(e.value)
            and msg in str(e.value)
            and f"lower {option} to at most 16" in str(e.value)
        )
    ok = DiffusionClassifier(model, "ttest", min_scores=4, max_scores=16, noise=noise, use_cache=False)
    assert all(r.error is None for r in ok.classify(pil[:2]))
    with pytest.raises(UserError, match="may use up to 50 samples"):
        ok.with_options(policy="exhaustive", n_grid=50)
    with pytest.raises(UserError, match="may use up to 20 samples"):
        ok.match(pil[:1], ["the digit one", "the digit two"], n_grid=20)
    assert ok.with_options(policy="exhaustive", n_grid=16).classify(pil[:1])[0].evaluations == 160


def test_a_prompt_cut_at_the_token_limit_is_said_once_and_is_the_reason_for_a_refusal(model, pil):
    """The digits encoder takes 16 tokens: a longer class prompt is cut (one warning naming it, no transformers
    line), and two classes equal after the cut are refused for that reason, not for "case, spacing and
    punctuation"."""
    long = "one two three four five six seven eight nine " * 2
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        r = DiffusionClassifier(model, **FAST).classify([pil[0]], ["seven", long + "one"])[0]
    assert r.ok
    said = [str(w.message) for w in got]
    assert len(said) == 1 and "(24 tokens) is longer than the digits text encoder's 16 tokens" in said[0], said
    with pytest.raises(UserError) as e:
        DiffusionClassifier(model, **FAST).classify([pil[0]], [long + "zero", long + "one"])
    assert "longer than the digits text encoder's 16 tokens" in str(e.value)
    assert "case, spacing and punctuation" not in str(e.value)
