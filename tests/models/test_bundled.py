"""The bundled models: digits (ten classes, square) and numbers (100 ordered-pair classes, non-square) load by
name with their shipped defaults, and numbers classifies held-out pairs."""

import json

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.cli import main
from diffcls_fast.data import numbers


def test_digits_bundle():
    m = load_model("digits", device="cpu")
    assert m.cond_kind == "text" and m.latent_shape == (1, 8, 8) and m.num_timesteps == 1000
    assert m.dtype == torch.float32 and m.device.type == "cpu" and not m.random_weights
    assert m.class_names[7] == "seven" and len(m.default_prompts) == 10
    assert torch.all(m.alphas_cumprod[1:] < m.alphas_cumprod[:-1])


@pytest.fixture(scope="module")
def model():
    return load_model("numbers")


def test_bundle_is_non_square_pixel_space(model):
    assert model.latent_shape == (1, 8, 16) and model.image_hw == (8, 16)
    assert len(model.class_names) == 100 and model.class_names[37] == "three seven"
    assert model.default_prompts[37] == "the digits three seven"


@pytest.mark.slow
def test_classifies_held_out_pairs_in_order(model):
    # Five held-out pairs, one of each of classes 0-4 (the held-out order is round-robin over classes);
    # exhaustive on a 5-point grid is 500 evaluations per image.
    pil, y, _ = numbers.load_split("heldout")
    clf = DiffusionClassifier(model, "exhaustive", n_grid=5, use_cache=False)
    res = clf.classify(pil[:5])
    assert [r.label for r in res] == y[:5].tolist()
    assert all(r.evaluations == 500 for r in res)
    # Word order matters: the swapped pair is a different class, and the model tells them apart.
    i, j = numbers.split_pairs("heldout")[12]  # class 12, "one two"
    swapped = clf.classify([numbers.to_pil(i, j), numbers.to_pil(j, i)])
    assert [r.label_name for r in swapped] == ["one two", "two one"]


@pytest.mark.slow
def test_eval_cli_on_numbers(capsys, tmp_path):
    out = tmp_path / "rows.jsonl"
    rc = main(
        [
            "eval",
            "--model",
            "numbers",
            "--limit",
            "3",
            "--policy",
            "exhaustive",
            "--n-grid",
            "5",
            "--json",
            "--out",
            str(out),
            "--no-cache",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["accuracy"] == 1.0 and summary["evals_per_image"] == 500
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"numbers/heldout/{i}-{j}" for i, j in numbers.split_pairs("heldout")[:3]]
    assert np.all([r["correct"] == 1 for r in rows])
