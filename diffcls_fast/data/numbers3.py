"""``numbers3``: three UCI digits side by side (8x24), labelled by the ordered triple (1,000 classes).

The class of an image ``[a | b | c]`` is ``100 * a + 10 * b + c`` and its name is the three number
words, ``"three one four"`` (class 314): a 1,000-class problem (the ImageNet regime) that a CPU can
train and classify. Every triple is built from the fixed digits split (``digits_split.json``):
training triples only from the 1,400 training digits, evaluation triples only from the 397
held-out digits.

The evaluation sets are saved as index triples into ``load_digits`` in ``numbers3_split.json``
beside this file, so they never depend on a library's RNG; ``make_split`` documents how they
were drawn (``numbers.balanced_tuples``, the recipe of the ``numbers`` split, with three digits):

* ``heldout``: 2,000 triples, 2 per class, held-out digits only, ordered round-robin over the
  classes so that every multiple-of-1,000 prefix (``eval --limit 1000``) is balanced too.
* ``train``: 2,000 triples drawn the same way from the training digits (for fitting anything,
  e.g. a policy's timestep weighting, without touching ``heldout``).

The model is class-conditional (a class id per image, no captions): see
``scripts/train_bundled.py --model numbers3``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import digits
from .numbers import balanced_tuples

SPLIT_FILE = Path(__file__).with_name("numbers3_split.json")
SPLIT_SEED = 20261207
PER_CLASS = 2
N_DIGITS = 3
N_CLASSES = 10**N_DIGITS
RESOLUTION = (8, 8 * N_DIGITS)  # (H, W)

WORDS = digits.CLASS_NAMES
CLASS_NAMES = [f"{a} {b} {c}" for a in WORDS for b in WORDS for c in WORDS]


def make_split(seed: int = SPLIT_SEED) -> dict:
    """How ``numbers3_split.json`` was drawn (kept for reference; the saved file is the truth)."""
    _, labels = digits._load()
    rng = np.random.default_rng(seed)
    return {
        "seed": seed,
        "heldout": balanced_tuples(digits.split_indices("heldout"), labels, PER_CLASS, rng, N_DIGITS),
        "train": balanced_tuples(digits.split_indices("train"), labels, PER_CLASS, rng, N_DIGITS),
    }


@lru_cache(maxsize=1)
def _split_data() -> dict:
    return json.loads(SPLIT_FILE.read_text())


def split_triples(split: str) -> list[list[int]]:
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown numbers3 split {split!r}; expected 'heldout' or 'train'")
    return _split_data()[split]


def label_of(triple) -> int:
    """The class 100a+10b+c of an index triple into ``load_digits``."""
    _, labels = digits._load()
    a, b, c = (int(labels[i]) for i in triple)
    return 100 * a + 10 * b + c


def triple_array(i: int, j: int, k: int) -> np.ndarray:
    """The 8x24 array (values 0..16) of digits i, j, k from left to right."""
    images, _ = digits._load()
    return np.concatenate([images[i], images[j], images[k]], axis=1)


def to_pil(i: int, j: int, k: int) -> Image.Image:
    return digits.to_pil(triple_array(i, j, k))


def load_split(split: str) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """(PIL images, labels 100a+10b+c, ids "i-j-k") of the ``heldout`` or ``train`` evaluation triples."""
    triples = split_triples(split)
    images = [to_pil(*t) for t in triples]
    y = np.array([label_of(t) for t in triples], dtype=np.int64)
    return images, y, ["-".join(map(str, t)) for t in triples]


if __name__ == "__main__":  # regenerate the saved split: python -m diffcls_fast.data.numbers3
    SPLIT_FILE.write_text(json.dumps(make_split()) + "\n")
    print(f"wrote {SPLIT_FILE}")
