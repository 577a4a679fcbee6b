"""``numbers``: two UCI digits side by side (8x16), labelled by the ordered pair (100 classes).

The class of an image ``[a | b]`` is ``10 * a + b`` and its name is the two number
words, ``"seven three"``. Every pair is built from the fixed digits split
(``digits_split.json``): training pairs only from the 1,400 training digits,
evaluation pairs only from the 397 held-out digits.

The evaluation sets are saved as index pairs into ``load_digits`` in
``numbers_split.json`` beside this file, so they never depend on a library's RNG;
``make_split`` documents how they were drawn:

* ``heldout``: 1,000 pairs, 10 per class, held-out digits only, ordered round-robin over
  the classes so that every multiple-of-100 prefix (``eval --limit 200``) is balanced too.
* ``train``: 1,000 pairs drawn the same way from the training digits (for fitting
  anything, e.g. a policy's timestep weighting, without touching ``heldout``).
* ``swap``: Winoground-style groups ``(x, y)`` with labels a != b: image 0 is
  ``[x | y]`` ("a b"), image 1 is ``[y | x]`` ("b a"); 5 groups for each of the
  45 unordered pairs {a, b}, 225 groups, held-out digits only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import digits

SPLIT_FILE = Path(__file__).with_name("numbers_split.json")
SPLIT_SEED = 20261123
PER_CLASS = 10
SWAP_PER_PAIR = 5
RESOLUTION = (8, 16)  # (H, W)

WORDS = digits.CLASS_NAMES
CLASS_NAMES = [f"{a} {b}" for a in WORDS for b in WORDS]

# Caption templates used for training. Template 0 is the classification prompt.
TEMPLATES = [
    "the digits {a} {b}",
    "{a} {b}",
    "a handwritten {a} and a handwritten {b}",
    "left {a} right {b}",
]


def prompt(a: int, b: int, template: int = 0) -> str:
    return TEMPLATES[template].format(a=WORDS[a], b=WORDS[b])


def default_prompts() -> list[str]:
    """One prompt per class, in class order (template 0)."""
    return [prompt(c // 10, c % 10) for c in range(100)]


def balanced_tuples(
    pool: list[int], labels: np.ndarray, per_class: int, rng: np.random.Generator, n_digits: int = 2
) -> list[list[int]]:
    """``per_class`` distinct tuples of ``n_digits`` distinct indices from ``pool`` for each class (the digits'
    labels read as a decimal number: 10a+b for pairs), the k-th index of label digit k.

    Ordered round-robin over the classes (tuple k of every class, then tuple k+1), so the
    first ``n_classes * k`` tuples (``eval --limit``) are k per class: every such prefix stays balanced.
    """
    by_label = {d: [i for i in pool if labels[i] == d] for d in range(10)}
    n_classes = 10**n_digits
    per: list[list[list[int]]] = []
    for c in range(n_classes):
        want = [c // 10 ** (n_digits - 1 - k) % 10 for k in range(n_digits)]
        seen: list[tuple[int, ...]] = []
        while len(seen) < per_class:
            t = tuple(int(rng.choice(by_label[d])) for d in want)
            if len(set(t)) == n_digits and t not in seen:
                seen.append(t)
        per.append([list(q) for q in seen])
    return [per[c][k] for k in range(per_class) for c in range(n_classes)]


def make_split(seed: int = SPLIT_SEED) -> dict:
    """How ``numbers_split.json`` was drawn (kept for reference; the saved file is the truth)."""
    _, labels = digits._load()
    rng = np.random.default_rng(seed)
    held = digits.split_indices("heldout")
    train = digits.split_indices("train")
    swap = []
    by_label = {d: [i for i in held if labels[i] == d] for d in range(10)}
    for a in range(10):
        for b in range(a + 1, 10):
            for _ in range(SWAP_PER_PAIR):
                swap.append([int(rng.choice(by_label[a])), int(rng.choice(by_label[b]))])
    return {
        "seed": seed,
        "heldout": balanced_tuples(held, labels, PER_CLASS, rng),
        "train": balanced_tuples(train, labels, PER_CLASS, rng),
        "swap": swap,
    }


@lru_cache(maxsize=1)
def _split_data() -> dict:
    return json.loads(SPLIT_FILE.read_text())


def split_pairs(split: str) -> list[list[int]]:
    if split not in ("train", "heldout", "swap"):
        raise ValueError(f"unknown numbers split {split!r}; expected 'heldout', 'train' or 'swap'")
    return _split_data()[split]


def pair_array(i: int, j: int) -> np.ndarray:
    """The 8x16 array (values 0..16) of digit i on the left and digit j on the right."""
    images, _ = digits._load()
    return np.concatenate([images[i], images[j]], axis=1)


def to_pil(i: int, j: int) -> Image.Image:
    return digits.to_pil(pair_array(i, j))


def load_split(split: str) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """(PIL images, labels 10a+b, ids "i-j") of the ``heldout`` or ``train`` evaluation pairs."""
    if split == "swap":
        raise ValueError("the swap split holds Winoground groups; use load_swap_groups()")
    _, labels = digits._load()
    pairs = split_pairs(split)
    images = [to_pil(i, j) for i, j in pairs]
    y = np.array([10 * labels[i] + labels[j] for i, j in pairs], dtype=np.int64)
    return images, y, [f"{i}-{j}" for i, j in pairs]


def load_swap_groups() -> list[dict]:
    """The Winoground-style groups: images [x|y], [y|x] and captions "a b", "b a" (template 0)."""
    _, labels = digits._load()
    groups = []
    for i, j in split_pairs("swap"):
        a, b = int(labels[i]), int(labels[j])
        groups.append(
            {
                "id": f"{i}-{j}",
                "images": [to_pil(i, j), to_pil(j, i)],
                "captions": [prompt(a, b), prompt(b, a)],
                "labels": (a, b),
            }
        )
    return groups


if __name__ == "__main__":  # regenerate the saved split: python -m diffcls_fast.data.numbers
    SPLIT_FILE.write_text(json.dumps(make_split()) + "\n")
    print(f"wrote {SPLIT_FILE}")
