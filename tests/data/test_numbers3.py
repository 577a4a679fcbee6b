"""The numbers3 data set (1,000 classes): saved splits are disjoint from training digits, class-balanced in
every multiple-of-1,000 prefix, and reproducible from their recipe."""

import numpy as np
import torch

from diffcls_fast.data import digits, numbers3
from diffcls_fast.evaluate import load_eval_split
from diffcls_fast.images import preprocess


def test_split_file_matches_its_recipe():
    # The saved file is the truth; make_split documents how it was drawn and must still reproduce it.
    saved = numbers3._split_data()
    remade = numbers3.make_split(saved["seed"])
    assert set(saved) == {"seed", "heldout", "train"}
    for key in ("heldout", "train"):
        assert remade[key] == saved[key], key


def test_eval_triples_use_only_their_side_of_the_digit_split():
    train, held = set(digits.split_indices("train")), set(digits.split_indices("heldout"))
    for split, pool in (("heldout", held), ("train", train)):
        triples = numbers3.split_triples(split)
        assert len(triples) == 2000 and len({tuple(t) for t in triples}) == 2000, split
        assert all(len(set(t)) == 3 and set(t) <= pool for t in triples), split


def test_splits_are_class_balanced_in_every_thousand_prefix_and_labelled_by_ordered_triple():
    _, labels = digits._load()
    for split in ("heldout", "train"):
        images, y, ids = numbers3.load_split(split)
        assert len(images) == len(y) == len(ids) == 2000 and len(set(ids)) == 2000
        assert y[:1000].tolist() == list(range(1000)) and y[1000:].tolist() == list(range(1000))  # round-robin
        for (i, j, k), c in zip(numbers3.split_triples(split), y):
            assert c == 100 * labels[i] + 10 * labels[j] + labels[k]
    assert len(numbers3.CLASS_NAMES) == 1000 and numbers3.CLASS_NAMES[314] == "three one four"
    assert numbers3.CLASS_NAMES[0] == "zero zero zero" and numbers3.CLASS_NAMES[-1] == "nine nine nine"


def test_triple_image_is_the_three_digits_side_by_side():
    i, j, k = numbers3.split_triples("heldout")[314]
    im = numbers3.to_pil(i, j, k)
    assert im.size == (24, 8) and im.mode == "L"
    x = preprocess(im, numbers3.RESOLUTION, 1)
    assert x.shape == (1, 8, 24)
    for pos, idx in enumerate((i, j, k)):
        one = preprocess(digits.to_pil(digits._load()[0][idx]), 8, 1)
        torch.testing.assert_close(x[:, :, 8 * pos : 8 * pos + 8], one, rtol=0, atol=0)


def test_eval_reads_the_bundled_split_by_model_name():
    images, y, names, ids = load_eval_split("numbers3", "heldout")
    i, j, k = numbers3.split_triples("heldout")[0]
    assert len(images) == 2000 and names == numbers3.CLASS_NAMES and ids[0] == f"numbers3/heldout/{i}-{j}-{k}"
    assert np.array_equal(y, numbers3.load_split("heldout")[1])
