"""Fashion-MNIST (Zalando, MIT licence) and the fixed subsets the bundled ``fashion`` model is measured on.

The full dataset comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``): 60,000 train and 10,000 test 28x28 grayscale images,
idx-gzip files in ``/usr/share/datasets/fashion-mnist/`` (another folder with the same four files
may be given with ``$DIFFCLS_FASHION_MNIST``). Only training the model needs it.

Two small subsets ship inside the package (``fashion_split.npz``, with ``FASHION_MNIST_LICENSE``
beside it), so ``eval --model fashion`` runs without the Debian package:

* ``heldout``: 2,000 test images, 200 per class, for measurement only. Ordered round-robin over
  the classes, so every multiple-of-10 prefix (``eval --limit 500``) is balanced too.
* ``train``: 1,000 training images, 100 per class, the same order, for fitting anything
  (calibration, a policy's settings) without touching ``heldout``.
* ``tune``: 500 more test images, 50 per class, none of them in ``heldout``, the same order. Unlike
  ``train`` the model never saw them, so a rule tuned on them (``diffcls-fast tune --split tune``) is
  not fitted to images the model classifies more easily than new ones.

``make_split`` documents how they were drawn (a seeded permutation per class).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILE = Path(__file__).with_name("fashion_split.npz")
LICENSE_FILE = Path(__file__).with_name("FASHION_MNIST_LICENSE")
SPLIT_SEED = 20261206
HELDOUT_PER_CLASS = 200
TRAIN_PER_CLASS = 100
TUNE_PER_CLASS = 50
SPLITS = ("heldout", "train", "tune")
RESOLUTION = 32  # the model's pixel size: 28x28 images are resized like any user image (images.preprocess)
INSTALL_HINT = "install it with: apt-get install dataset-fashion-mnist (or set DIFFCLS_FASHION_MNIST to its folder)"

# Fashion-MNIST's ten labels, in label order, as caption words.
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_ARTICLE = {name: ("an" if name[0] in "aeiou" else "a") for name in CLASS_NAMES}

# Caption templates used for training. Template 0 is the default classification prompt.
TEMPLATES = [
    "a photo of {a} {name}",
    "{a} {name}",
    "a black and white photo of {a} {name}",
    "a low resolution photo of {a} {name}",
    "a picture of {a} {name}, a fashion item",
    "{name}",
]


def prompt(label: int, template: int = 0) -> str:
    name = CLASS_NAMES[label]
    return TEMPLATES[template].format(a=_ARTICLE[name], name=name)


def default_prompts() -> list[str]:
    """One prompt per class, in class order (template 0)."""
    return [prompt(c) for c in range(len(CLASS_NAMES))]


def data_dir() -> Path:
    return Path(os.environ.get("DIFFCLS_FASHION_MNIST", DATA_DIR))


def available() -> bool:
    """Whether the full dataset (the Debian package's four files) is installed."""
    d = data_dir()
    return all((d / f).is_file() for f in _FILES["train"] + _FILES["test"])


_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): the big-endian header says the element type (only uint8 here) and the dimensions."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path}: not an idx file of unsigned bytes (header {raw[:4].hex()})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


@lru_cache(maxsize=2)
def load_full(part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the full ``train`` or ``test`` set."""
    if part not in _FILES:
        raise ValueError(f"unknown part {part!r}; expected 'train' or 'test'")
    if not available():
        raise UserError(f"Fashion-MNIST is not installed in {data_dir()}; {INSTALL_HINT}")
    img_file, lab_file = (data_dir() / f for f in _FILES[part])
    images, labels = read_idx(img_file), read_idx(lab_file).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise UserError(f"{data_dir()}: {part} images {images.shape} do not match labels {labels.shape}")
    return images, labels


def balanced_order(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement, interleaved class by class
    (c0, c1, ..., c9, c0, ...) so that every prefix of a multiple of the class count is balanced."""
    n_classes = int(labels.max()) + 1
    picks = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(n_classes)]
    if min(len(p) for p in picks) < per_class:
        raise ValueError(f"a class has fewer than {per_class} images")
    return np.stack(picks, axis=1).reshape(-1)


def make_split(seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The shipped subsets, drawn from the full dataset (needs the Debian package)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, part, per_class in (("heldout", "test", HELDOUT_PER_CLASS), ("train", "train", TRAIN_PER_CLASS)):
        images, labels = load_full(part)
        idx = balanced_order(labels, per_class, rng)
        out |= {f"{split}_index": idx.astype(np.int32), f"{split}_images": images[idx], f"{split}_labels": labels[idx]}
    # drawn last, so the two subsets above are what they were before this one existed
    images, labels = load_full("test")
    rest = np.setdiff1d(np.arange(len(labels)), out["heldout_index"])
    idx = rest[balanced_order(labels[rest], TUNE_PER_CLASS, rng)]
    out |= {"tune_index": idx.astype(np.int32), "tune_images": images[idx], "tune_labels": labels[idx]}
    out["seed"] = np.array(seed)
    return out


@lru_cache(maxsize=1)
def _shipped() -> dict[str, np.ndarray]:
    with np.load(SPLIT_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels, indices into the dataset's test or train part) of a shipped subset."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    d = _shipped()
    return d[f"{split}_images"], d[f"{split}_labels"].astype(np.int64), d[f"{split}_index"].astype(np.int64)


def to_pil(img: np.ndarray) -> Image.Image:
    """A 28x28 uint8 image (garment bright on black, as the dataset stores it) -> grayscale PIL image."""
    return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="L")


def load_split(split: str) -> tuple[list[Image.Image], np.ndarray, list[int]]:
    """(PIL images, labels, dataset indices) of a shipped subset, like ``digits.load_split``."""
    images, labels, idx = split_arrays(split)
    return [to_pil(im) for im in images], labels, idx.tolist()
