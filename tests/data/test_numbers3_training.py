"""``scripts/train_bundled.py --model numbers3``: a few steps write a class-conditional folder that the loader
serves with the number words as class names, and a resumed run continues exactly where it stopped."""

import torch

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data import numbers3

from .conftest import check_resume_is_exact, train


def test_a_few_steps_give_a_folder_the_loader_classifies_with(train_bundled, tmp_path):
    out = tmp_path / "numbers3"
    train(train_bundled, "numbers3", tmp_path / "run", out, 2)
    assert (out / "classes.txt").read_text().splitlines()[314] == "three one four"
    m = load_model(str(out), device="cpu")
    assert m.cond_kind == "class" and m.family == "class-unet" and m.latent_shape == (1, 8, 24)
    assert m.image_hw == (8, 24) and len(m.class_names) == 1000 and m.class_names[314] == "three one four"
    # the exported table is the factored training embedding, summed per class
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    digit, residual = _factored(train_bundled, ck)
    want = digit[0, 3] + digit[1, 1] + digit[2, 4] + residual[314]
    got = m.network.class_embedding.weight[314]
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-3, atol=1e-3)
    i, j, k = numbers3.split_triples("heldout")[314]
    res = DiffusionClassifier(m, "exhaustive", n_grid=2, use_cache=False).classify(
        [numbers3.to_pil(i, j, k)], ["three one four", "one six seven"]
    )
    assert res[0].label_name in ("three one four", "one six seven") and res[0].evaluations == 4


def test_a_resumed_run_matches_an_uninterrupted_one(train_bundled, tmp_path, monkeypatch):
    check_resume_is_exact(train_bundled, "numbers3", tmp_path, monkeypatch)


def _factored(train_bundled, ck: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The (position, digit) vectors and the per-class residual of a checkpoint's EMA weights."""
    unet, _ = train_bundled.build_numbers3(train_bundled.Numbers3Task)
    names = [n for n, _ in unet.named_parameters()]
    ema = dict(zip(names, ck["ema"]))
    return ema["class_embedding.digit"], ema["class_embedding.residual"]
