"""``scripts/train_bundled.py --model numbers3``: a few steps write a class-conditional folder that the loader
serves with the number words as class names, and a resumed run continues exactly where it stopped."""

import sys
from pathlib import Path

import pytest
import torch

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data import numbers3

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def train_bundled():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import train_bundled

        yield train_bundled
    finally:
        sys.path.remove(str(SCRIPTS))


def _train(train_bundled, run: Path, out: Path, steps: int, *extra: str) -> None:
    argv = ["--model", "numbers3", "--run", str(run), "--out", str(out), "--steps", str(steps), "--batch-size", "4"]
    train_bundled.main(argv + list(extra))


class Killed(Exception):
    pass


def test_a_few_steps_give_a_folder_the_loader_classifies_with(train_bundled, tmp_path):
    out = tmp_path / "numbers3"
    _train(train_bundled, tmp_path / "run", out, 2)
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
    _train(train_bundled, tmp_path / "straight", tmp_path / "a", 3)
    step, calls = train_bundled.optimizer_step, []

    def killed_in_the_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        step(*args)

    monkeypatch.setattr(train_bundled, "optimizer_step", killed_in_the_third_step)
    with pytest.raises(Killed):  # checkpoints after every step (--checkpoint-minutes 0), killed in the third
        _train(train_bundled, tmp_path / "resumed", tmp_path / "b", 3, "--checkpoint-minutes", "0")
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)["step"] == 2
    _train(train_bundled, tmp_path / "resumed", tmp_path / "b", 3)
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 3
    for e, f in zip(straight["ema"], resumed["ema"]):
        torch.testing.assert_close(e, f, rtol=0, atol=0)
    assert (tmp_path / "b" / "unet").is_dir()


def _factored(train_bundled, ck: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The (position, digit) vectors and the per-class residual of a checkpoint's EMA weights."""
    unet, _ = train_bundled.build_numbers3(train_bundled.Numbers3Task)
    names = [n for n, _ in unet.named_parameters()]
    ema = dict(zip(names, ck["ema"]))
    return ema["class_embedding.digit"], ema["class_embedding.residual"]
