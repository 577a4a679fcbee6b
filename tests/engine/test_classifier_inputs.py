"""What users pass to the Python API: every natural image form works, every wrong one is one UserError."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.cli import main
from diffcls_fast.data.digits import load_split
from diffcls_fast.errors import UserError
from diffcls_fast.images import preprocess

pytestmark = pytest.mark.slow

CLASSES = ["zero", "one", "three", "seven", "nine"]


@pytest.fixture(scope="module")
def model():
    return load_model("digits", device="cpu")


@pytest.fixture(scope="module")
def clf(model):
    return DiffusionClassifier(model, "exhaustive", n_grid=5, use_cache=False)


@pytest.fixture(scope="module")
def digits():
    """Held-out digits of the classes in CLASSES."""
    pil, y, _ = load_split("heldout")
    keep = [i for i, t in enumerate(y) if t in (0, 3, 7)][:3]
    return [pil[i] for i in keep]


def _same(a, b):
    assert a.label == b.label
    np.testing.assert_array_equal(a.mean_errors, b.mean_errors)


def test_files_in_other_modes_classify_as_the_plain_image(clf, digits, tmp_path):
    """EXIF-rotated, 16-bit, alpha-ink and black-and-white files of one digit: the plain digit's answer."""
    d = digits[0]
    ink = np.asarray(d)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    d.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    Image.fromarray(ink.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(np.dstack([np.full_like(ink, 255)] * 3 + [ink])).save(tmp_path / "alpha.png")
    d.save(tmp_path / "plain.png")
    paths = [tmp_path / n for n in ("plain.png", "rotated.png", "deep.png", "alpha.png")]
    plain, *others = clf.classify(paths, CLASSES)
    assert plain.label_name == "zero"
    for r in others:
        _same(r, plain)
    bw = clf.classify(d.point(lambda v: 255 if v > 127 else 0).convert("1"), CLASSES)[0]  # mode 1 runs like any image
    assert bw.label_name == "zero"


def test_numpy_arrays_and_uint8_tensors_are_images(clf, digits):
    d = digits[1]
    ref = clf.classify(d, CLASSES)[0]
    arr = np.asarray(d)
    for im in (arr, arr[..., None], arr[None], torch.from_numpy(arr.copy())[None]):
        _same(clf.classify(im, CLASSES)[0], ref)


def test_generators_batches_and_single_images(clf, digits):
    ref = clf.classify(digits, CLASSES)
    pixels = torch.stack([preprocess(d, 8, 1) for d in digits])
    for images in ((d for d in digits), pixels, pixels.numpy()):
        for a, b in zip(clf.classify(images, CLASSES), ref, strict=True):
            _same(a, b)
    streamed = dict(clf.classify_iter(iter(digits), CLASSES))
    assert sorted(streamed) == [0, 1, 2]
    assert [r.label for r in clf.classify((d for d in digits), ["seven"])] == [0, 0, 0]  # one class: certain
    _same(clf.classify(pixels[0], CLASSES)[0], ref[0])


@pytest.mark.parametrize(
    "images, match",
    [
        (None, "images is None"),
        (42, "got int"),
        ([torch.zeros(3, 8, 8)], r"images\[0\]: tensor of shape \[3, 8, 8\], expected \[C, H, W\] = \[1, 8, 8\]"),
        ([torch.zeros(1, 28, 28)], r"expected \[C, H, W\] = \[1, 8, 8\]"),
        (torch.zeros(8, 8), r"expected \[C, H, W\] = \[1, 8, 8\]"),
        ([torch.full((1, 8, 8), 255.0)], r"span \[255, 255\], expected \[-1, 1\]"),
        ([np.zeros((8, 8), np.int64)], r"images\[0\].*int64"),
        (["ok.png", object()], r"images\[1\].*object"),
    ],
)
def test_malformed_images_are_user_errors(clf, digits, tmp_path, monkeypatch, images, match):
    monkeypatch.chdir(tmp_path)
    digits[0].save("ok.png")
    with pytest.raises(UserError, match=match):
        clf.classify(images, CLASSES)


def test_class_names_must_be_strings(clf, digits):
    with pytest.raises(UserError, match=r"classes\[1\] is 3 \(int\)"):
        clf.classify(digits[:1], ["zero", 3])
    with pytest.raises(UserError, match="got int"):
        clf.classify(digits[:1], 3)


@pytest.mark.parametrize("temperature", [0, -0.01, float("nan"), float("inf"), "0.1"])
def test_temperature_must_be_finite_and_positive(model, temperature):
    with pytest.raises(UserError, match="temperature must be a finite number > 0"):
        DiffusionClassifier(model, temperature=temperature, use_cache=False)


def test_negative_seed_is_a_user_error_in_the_api_and_the_cli(model, capsys):
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        DiffusionClassifier(model, seed=-1, use_cache=False)
    assert main(["classify", str(_example()), "--seed", "-1", "--no-cache"]) == 2
    assert "seed must be a non-negative integer" in capsys.readouterr().err


def test_large_seeds_are_not_truncated(model, digits):
    def errors(seed):
        return (
            DiffusionClassifier(model, "exhaustive", n_grid=5, seed=seed, use_cache=False)
            .classify(digits[0], CLASSES)[0]
            .mean_errors
        )

    base = errors(0)
    for seed in (2**32, 2**70):
        assert not np.array_equal(errors(seed), base), seed


def _example():
    from pathlib import Path

    return sorted((Path(__file__).resolve().parents[2] / "examples").glob("digit-*.png"))[0]


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(policy="ttest", min_scores=2.5), "min_scores must be an integer"),
        (dict(policy="exhaustive", n_grid=3.0), "n_grid must be an integer"),
        (dict(policy="exhaustive", n_grid=True), "n_grid must be an integer"),
        (dict(policy="halving", rounds=[2, 4.5, 12]), "rounds must be a list of integers"),
        (dict(policy="adaptive", n_samples="50"), "n_samples must be a list of integers"),
        (dict(policy="ttest", cutoff_pval="0.01"), "cutoff_pval must be a number"),
        (dict(loss="bogus"), "unknown loss 'bogus'"),
    ],
)
def test_bad_option_types_are_user_errors_when_the_classifier_is_made(opts, match):
    from diffcls_fast import load_model

    with pytest.raises(UserError, match=match):
        DiffusionClassifier(load_model("digits"), use_cache=False, **opts)


def test_a_hand_built_class_spec_is_checked(clf, digits):
    from diffcls_fast.engine import ClassSpec

    cases = [
        (ClassSpec(["a", "b"], ["x"], [np.array([0])]), "2 names but 1 class_prompts"),
        (ClassSpec(["a", "a"], ["x", "y"], [np.array([0]), np.array([1])]), "duplicate class name"),
        (ClassSpec(["a", "b"], ["x", "y"], [np.array([0]), np.array([], dtype=np.int64)]), "has no prompt"),
        (ClassSpec(["a", "b"], ["x", "y"], [np.array([0]), np.array([2])]), r"must index ClassSpec.prompts \(0..1\)"),
        (ClassSpec(["a", 2], ["x", "y"], [np.array([0]), np.array([1])]), "names must be strings"),
    ]
    for spec, match in cases:
        with pytest.raises(UserError, match=match):
            clf.classify(digits[:1], spec)
    good = ClassSpec(["seven", "one"], ["the digit seven", "the digit one"], [np.array([0]), np.array([1])])
    assert clf.classify(digits[:1], good)[0].error is None
