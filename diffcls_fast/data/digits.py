"""The UCI handwritten digits (scikit-learn's ``load_digits``) and their fixed split.

The split is a seeded permutation of the 1,797 images: the first 1,400 train the
bundled ``digits`` model, the last 397 are held out. The index lists are saved in
``digits_split.json`` beside this file, so the split never depends on a library's
RNG; ``make_split`` documents how they were drawn.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_FILE = Path(__file__).with_name("digits_split.json")
SPLIT_SEED = 20231001
N_TRAIN = 1400

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Caption templates used for training. Template 0 is the default classification prompt.
TEMPLATES = [
    "a handwritten digit {name}",
    "the number {digit}",
    "a photo of the digit {name}",
    "handwritten {name}",
    "the digit {digit}",
    "a scan of a handwritten {name}",
]


def default_prompts() -> list[str]:
    """One prompt per class, in class order (template 0)."""
    return [TEMPLATES[0].format(name=n, digit=i) for i, n in enumerate(CLASS_NAMES)]


def make_split(n: int = 1797, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    return {"seed": seed, "train": sorted(perm[:N_TRAIN].tolist()), "heldout": sorted(perm[N_TRAIN:].tolist())}


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def split_indices(split: str) -> list[int]:
    data = json.loads(SPLIT_FILE.read_text())
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    return data[split]


def to_pil(img8: np.ndarray) -> Image.Image:
    """An 8x8 digit (values 0..16, ink is high) -> 8-bit grayscale PIL image, ink white."""
    return Image.fromarray(np.round(img8 * (255.0 / 16.0)).astype(np.uint8), mode="L")


def load_split(split: str) -> tuple[list[Image.Image], np.ndarray, list[int]]:
    """(PIL images, labels, indices into load_digits) of one split."""
    images, labels = _load()
    idx = split_indices(split)
    return [to_pil(images[i]) for i in idx], labels[idx], idx
