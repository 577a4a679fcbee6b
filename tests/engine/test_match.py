"""Image-text matching: Winoground scoring, and the match matrix computed through the engine."""

import numpy as np
import pytest

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.data.digits import CLASS_NAMES, load_split
from diffcls_fast.engine.winoground import WinogroundScores, summarize, winoground, winoground_from_errors

CAPS = [f"a handwritten digit {n}" for n in CLASS_NAMES]


# -- Winoground scoring (pure) -------------------------------------------------------------
@pytest.mark.parametrize(
    "scores, want",
    [
        ([[2, 1], [1, 2]], (True, True, True)),  # the diagonal wins both ways
        ([[1, 2], [2, 1]], (False, False, False)),  # the anti-diagonal wins both ways
        ([[3, 1], [4, 5]], (True, False, False)),  # each image prefers its caption; c0 prefers i1
        ([[3, 4], [1, 5]], (False, True, False)),  # each caption prefers its image; i0 prefers c1
        ([[1, 1], [0, 2]], (False, True, False)),  # a tie on image 0's captions: text fails
        ([[1, 0], [1, 2]], (True, False, False)),  # a tie on caption 0's images: image fails
        ([[1, 1], [1, 1]], (False, False, False)),  # all tied
        ([[np.nan, 0], [0, 1]], (False, False, False)),  # NaN compares false
    ],
)
def test_winoground_scores(scores, want):
    assert tuple(winoground(np.array(scores, float)).to_dict().values()) == want


def test_winoground_from_errors_flips_the_sign():
    err = np.array([[0.1, 0.3], [0.2, 0.05]])  # lower error = better match
    assert winoground_from_errors(err) == WinogroundScores(True, True, True)
    assert winoground_from_errors(-err) == WinogroundScores(False, False, False)


def test_winoground_needs_a_2x2_matrix():
    with pytest.raises(ValueError, match="2x2"):
        winoground(np.zeros((2, 3)))


def test_summarize_means_and_counts():
    s = summarize(
        [
            WinogroundScores(True, True, True),
            WinogroundScores(True, False, False),
            WinogroundScores(False, False, False),
            WinogroundScores(True, False, False),
        ]
    )
    assert s == {
        "groups": 4,
        "text_score": 0.75,
        "text_correct": 3,
        "image_score": 0.25,
        "image_correct": 1,
        "group_score": 0.25,
        "group_correct": 1,
    }
    assert summarize([])["text_score"] == 0.0


# -- the match matrix on the bundled digits model ------------------------------------------
@pytest.fixture(scope="module")
def clf():
    return DiffusionClassifier(
        load_model("digits", device="cpu"), "exhaustive", n_grid=4, batch_size=64, use_cache=False
    )


@pytest.fixture(scope="module")
def pil():
    return load_split("heldout")[0][:4]


def test_match_equals_exhaustive_classify(clf, pil):
    # Same images, seed and grid; the captions are the classify prompts: the same noise, the same numbers.
    res = clf.match(pil, CAPS)
    ref = np.stack([r.mean_errors for r in clf.classify(pil)])
    assert res.errors.shape == (4, 10) and res.captions == CAPS
    np.testing.assert_array_equal(res.errors, ref)
    assert res.evaluations == 4 * 10 * 4 == clf.last_stats.evaluations
    assert res.n_grid == 4 and res.policy == "exhaustive(grid=4)" and not res.shared_noise
    assert (res.best_caption() == [r.label for r in clf.classify(pil)]).all()


def test_identical_captions_give_identical_columns(clf, pil):
    caps = [CAPS[3], CAPS[7], CAPS[3], CAPS[1]]
    res = clf.match(pil[:2], caps)
    np.testing.assert_array_equal(res.errors[:, 0], res.errors[:, 2])
    assert not np.array_equal(res.errors[:, 0], res.errors[:, 1])
    assert res.evaluations == 2 * 3 * 4  # a repeated caption is scored once per sample


def test_same_image_twice_gives_identical_rows(clf, pil):
    res = clf.match([pil[0], pil[1], pil[0]], CAPS[:3])
    np.testing.assert_array_equal(res.errors[0], res.errors[2])
    assert not np.array_equal(res.errors[0], res.errors[1])


def test_a_caption_scores_the_same_whatever_the_other_captions(clf, pil):
    # The samples are a function of (seed, image, sample index): the caption set does not move them.
    a = clf.match(pil[:2], [CAPS[5], CAPS[2]])
    b = clf.match(pil[:2], [CAPS[9], CAPS[2], CAPS[0], CAPS[5]])
    np.testing.assert_allclose(a.errors[:, 0], b.errors[:, 3], rtol=1e-6)
    np.testing.assert_allclose(a.errors[:, 1], b.errors[:, 1], rtol=1e-6)


def test_one_caption_and_one_image(clf, pil):
    res = clf.match(pil[0], [CAPS[1]])
    assert res.errors.shape == (1, 1) and np.isfinite(res.errors).all()
    assert res.evaluations == 4
    np.testing.assert_allclose(res.errors[0, 0], clf.match(pil[0], [CAPS[1], CAPS[2]]).errors[0, 0], rtol=1e-6)


def test_one_array_image_is_one_image_as_in_classify(clf, pil):
    """A single HWC / HW array or CHW tensor is one image to match, as to classify (not one image per row)."""
    hw = np.asarray(pil[0])
    want = clf.match(pil[0], CAPS[:2]).errors
    for one in (hw, np.repeat(hw[:, :, None], 3, axis=2)):
        np.testing.assert_allclose(clf.match(one, CAPS[:2]).errors, want, rtol=1e-6)
    assert clf.match([hw, hw], CAPS[:2]).errors.shape == (2, 2)


def test_shared_noise_across_images(clf, pil):
    per_image = clf.match(pil[:2], CAPS[:2])
    shared = clf.match(pil[:2], CAPS[:2], shared_noise=True)
    assert shared.shared_noise and shared.errors.shape == (2, 2)
    assert not np.allclose(shared.errors, per_image.errors)
    # With shared noise, an image's row does not depend on which image it is: a copy of image 1 in
    # place of image 0 gives image 1's row.
    again = clf.match([pil[1], pil[1]], CAPS[:2], shared_noise=True)
    np.testing.assert_array_equal(again.errors[0], shared.errors[1])


def test_groups_score_only_their_own_captions(clf, pil):
    groups = [([pil[0], pil[1]], [CAPS[1], CAPS[2]]), ([pil[2]], [CAPS[2], CAPS[9], CAPS[4]]), ([], [CAPS[0]])]
    out = dict(clf.match_groups(groups, n_grid=4))
    assert sorted(out) == [0, 1, 2]
    assert out[0].errors.shape == (2, 2) and out[1].errors.shape == (1, 3) and out[2].errors.shape == (0, 1)
    assert out[0].evaluations == 2 * 2 * 4 and out[1].evaluations == 3 * 4
    assert clf.last_stats.evaluations == 2 * 2 * 4 + 3 * 4
    alone = clf.match(pil[:2], [CAPS[1], CAPS[2]])
    np.testing.assert_allclose(out[0].errors, alone.errors, rtol=1e-6)


def test_bad_inputs(clf, pil):
    for caps, msg in [
        ([], "empty"),
        ("a cat", "list of strings"),
        (["a cat", "  "], "caption 1 is empty"),
        (["a", 3], "not a string"),
    ]:
        with pytest.raises(UserError, match=msg):
            clf.match(pil[:1], caps)
    with pytest.raises(UserError, match="grid size"):
        clf.match(pil[:1], CAPS[:2], n_grid=0)
    with pytest.raises(ValueError, match="2 images x 2 captions"):
        clf.match(pil[:1], CAPS[:2]).winoground()
