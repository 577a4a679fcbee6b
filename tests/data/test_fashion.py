"""Fashion-MNIST: the idx reader, the shipped subsets (class-balanced, fixed, with their licence), and that the
shipped file is what ``make_split`` draws from the dataset (when Debian's dataset-fashion-mnist is installed)."""

import gzip

import numpy as np
import pytest

from diffcls_fast import UserError
from diffcls_fast.data import fashion
from diffcls_fast.images import preprocess

needs_dataset = pytest.mark.skipif(
    not fashion.available(),
    reason=f"Fashion-MNIST is not installed in {fashion.data_dir()} (apt-get install dataset-fashion-mnist)",
)


def _write_idx(path, arr: np.ndarray, dtype_code: int = 0x08) -> None:
    header = bytes([0, 0, dtype_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_refusals(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(fashion.read_idx(tmp_path / "a.gz"), arr)
    _write_idx(tmp_path / "b.gz", arr, dtype_code=0x0D)  # float32 elements: not what the dataset holds
    with pytest.raises(UserError, match="not an idx file of unsigned bytes"):
        fashion.read_idx(tmp_path / "b.gz")
    with gzip.open(tmp_path / "c.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 9)
    with pytest.raises(UserError, match=r"header says \[10\] but holds 9 bytes"):
        fashion.read_idx(tmp_path / "c.gz")


def test_missing_dataset_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFCLS_FASHION_MNIST", str(tmp_path))
    fashion.load_full.cache_clear()
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion.load_full("train")


@pytest.mark.parametrize("split, n, per_class", [("heldout", 2000, 200), ("train", 1000, 100), ("tune", 500, 50)])
def test_shipped_subsets_are_balanced_round_robin(split, n, per_class):
    images, labels, idx = fashion.split_arrays(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert len(set(idx.tolist())) == n and idx.min() >= 0 and idx.max() < (60_000 if split == "train" else 10_000)
    assert np.bincount(labels).tolist() == [per_class] * 10
    assert labels[:10].tolist() == list(range(10)) and np.bincount(labels[:500]).tolist() == [50] * 10
    assert images.reshape(n, -1).std(axis=1).min() > 0  # real images, not blanks


def test_images_go_through_classifys_preprocessing():
    pil, labels, ids = fashion.load_split("heldout")
    assert pil[0].size == (28, 28) and pil[0].mode == "L" and len(ids) == 2000
    x = preprocess(pil[0], fashion.RESOLUTION, 1)
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_names_prompts_and_licence():
    assert fashion.CLASS_NAMES[9] == "ankle boot" and len(fashion.CLASS_NAMES) == 10
    assert fashion.default_prompts()[9] == "a photo of an ankle boot"
    assert fashion.prompt(7, 1) == "a sneaker"
    assert "Zalando SE" in fashion.LICENSE_FILE.read_text()


@needs_dataset
def test_shipped_file_is_what_make_split_draws():
    saved = fashion._shipped()
    remade = fashion.make_split(int(saved["seed"]))
    for key in saved:
        assert np.array_equal(remade[key], saved[key]), key
    test_images, test_labels = fashion.load_full("test")
    images, labels, idx = fashion.split_arrays("heldout")
    assert np.array_equal(test_images[idx], images) and np.array_equal(test_labels[idx], labels)


def test_the_tune_subset_is_test_images_outside_heldout():
    _, _, held = fashion.split_arrays("heldout")
    _, _, tune = fashion.split_arrays("tune")
    assert not set(tune.tolist()) & set(held.tolist())
