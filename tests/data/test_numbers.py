"""The numbers data set: saved splits are disjoint from training digits, class-balanced and reproducible."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffcls_fast.data import digits, numbers
from diffcls_fast.images import preprocess


def test_split_file_matches_its_recipe():
    # The saved file is the truth; make_split documents how it was drawn and must still reproduce it.
    saved = numbers._split_data()
    remade = numbers.make_split(saved["seed"])
    for key in ("heldout", "train", "swap"):
        assert remade[key] == saved[key], key


def test_eval_pairs_use_only_their_side_of_the_digit_split():
    train, held = set(digits.split_indices("train")), set(digits.split_indices("heldout"))
    assert not train & held
    for split, pool in (("heldout", held), ("swap", held), ("train", train)):
        pairs = numbers.split_pairs(split)
        assert all(i in pool and j in pool and i != j for i, j in pairs), split


def test_heldout_is_class_balanced_and_labelled_by_ordered_pair():
    images, y, ids = numbers.load_split("heldout")
    assert len(images) == len(y) == len(ids) == 1000 and len(set(ids)) == 1000
    assert np.bincount(y, minlength=100).tolist() == [10] * 100
    assert y[:100].tolist() == list(range(100)) and np.bincount(y[:300]).tolist() == [3] * 100  # prefixes balanced
    _, labels = digits._load()
    for (i, j), c in zip(numbers.split_pairs("heldout"), y):
        assert c == 10 * labels[i] + labels[j]
    assert numbers.CLASS_NAMES[73] == "seven three"
    assert numbers.default_prompts()[73] == "the digits seven three"


def test_swap_groups_swap_positions_and_words():
    groups = numbers.load_swap_groups()
    assert len(groups) >= 200
    assert {tuple(sorted(g["labels"])) for g in groups} == {(a, b) for a in range(10) for b in range(a + 1, 10)}
    g = groups[0]
    a, b = g["labels"]
    left, right = (np.asarray(im) for im in g["images"])
    assert a != b and left.shape == (8, 16)
    np.testing.assert_array_equal(left[:, :8], right[:, 8:])
    np.testing.assert_array_equal(left[:, 8:], right[:, :8])
    assert g["captions"] == [numbers.prompt(a, b), numbers.prompt(b, a)]


def test_pair_image_is_the_two_digits_side_by_side():
    i, j = numbers.split_pairs("heldout")[5]
    im = numbers.to_pil(i, j)
    assert im.size == (16, 8) and im.mode == "L"
    x = preprocess(im, numbers.RESOLUTION, 1)
    assert x.shape == (1, 8, 16)
    torch.testing.assert_close(x[:, :, :8], preprocess(digits.to_pil(digits._load()[0][i]), 8, 1), rtol=0, atol=0)
    torch.testing.assert_close(x[:, :, 8:], preprocess(digits.to_pil(digits._load()[0][j]), 8, 1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("size", "res"),
    [
        ((32, 16), (8, 16)),
        ((17, 5), (8, 16)),
        ((100, 20), (8, 16)),
        ((16, 32), (8, 16)),
        ((40, 30), 8),
        ((7, 9), (3, 5)),
    ],
)
def test_non_square_preprocessing_covers_and_center_crops(size, res):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L")
    h, w = (res, res) if isinstance(res, int) else res
    x = preprocess(im, res, 1)
    assert x.shape == (1, h, w)
    assert x.min() >= -1 and x.max() <= 1


def test_non_square_preprocessing_of_an_exact_multiple_is_a_plain_downscale():
    # A 16x32 image at (8, 16) keeps its aspect ratio: no crop, just a 2x bicubic downscale.
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (16, 32), dtype=np.uint8), mode="L")
    want = np.asarray(im.resize((16, 8), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    np.testing.assert_array_equal(preprocess(im, (8, 16), 1)[0].numpy(), want)
