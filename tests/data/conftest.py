"""What the training-script tests share: ``scripts/train_bundled.py`` imported as a module, a short run of it, and
the check that a run killed mid-way and resumed ends where an uninterrupted one does."""

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def train_bundled():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import train_bundled

        yield train_bundled
    finally:
        sys.path.remove(str(SCRIPTS))


def train(train_bundled, model: str, run: Path, out: Path, steps: int, *extra: str) -> None:
    argv = ["--model", model, "--run", str(run), "--out", str(out), "--steps", str(steps), "--batch-size", "4"]
    train_bundled.main(argv + list(extra))


class Killed(Exception):
    pass


def check_resume_is_exact(train_bundled, model: str, tmp_path: Path, monkeypatch) -> None:
    """3 steps straight, and 3 steps killed in the third (checkpointing after every step) then rerun: the same
    EMA weights to the bit, and the rerun writes the folder."""
    train(train_bundled, model, tmp_path / "straight", tmp_path / "a", 3)
    step, calls = train_bundled.optimizer_step, []

    def killed_in_the_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        step(*args)

    monkeypatch.setattr(train_bundled, "optimizer_step", killed_in_the_third_step)
    with pytest.raises(Killed):  # checkpoints after every step (--checkpoint-minutes 0), killed in the third
        train(train_bundled, model, tmp_path / "resumed", tmp_path / "b", 3, "--checkpoint-minutes", "0")
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "b").exists()
    train(train_bundled, model, tmp_path / "resumed", tmp_path / "b", 3)
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 3
    for e, f in zip(straight["ema"], resumed["ema"]):
        torch.testing.assert_close(e, f, rtol=0, atol=0)
    assert (tmp_path / "b" / "unet").is_dir()
