"""load_model: the device first, then which loader serves the name or folder."""

import shutil

import pytest
import torch

from diffcls_fast import UserError, load_model
from diffcls_fast.models.class_conditional import load_class_conditional
from diffcls_fast.models.loader import detect_family
from diffcls_fast.models.text_to_image import load_text_to_image

from .helpers import digits_copy
from .tiny_folders import make_class_unet_folder, make_dit_folder


@pytest.fixture
def cpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_load_model_checks_the_device_before_loading(cpu_build):
    # checked first: no folder lookup, no weights read
    with pytest.raises(UserError, match="no CUDA"):
        load_model("/no/such/model", device="cuda")
    with pytest.raises(UserError, match="not a device"):
        load_model("digits", device="bogus")


def test_the_layout_picks_the_loader(tmp_path):
    assert detect_family(digits_copy(tmp_path)) is load_text_to_image
    assert detect_family(make_dit_folder(tmp_path / "dit")) is load_class_conditional
    assert detect_family(make_class_unet_folder(tmp_path / "cu")) is load_class_conditional


def test_not_a_model_folder(tmp_path):
    with pytest.raises(
        UserError,
        match=r"model 'nope': no such folder \(bundled models: digits, fashion, numbers, numbers-flow, numbers3; ",
    ):
        load_model("nope", device="cpu")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="'.*f': not a folder"):
        load_model(str(tmp_path / "f"), device="cpu")
    with pytest.raises(UserError, match=r"missing unet/ \(not a diffusion model folder"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    "remove, fragment",
    [
        ("unet", "missing unet/"),
        ("tokenizer", "missing tokenizer/"),
        ("text_encoder", r"missing text_encoder/ \(a text-to-image folder needs"),
        ("scheduler", "missing scheduler/"),
    ],
)
def test_missing_component_is_one_line(tmp_path, remove, fragment):
    dst = digits_copy(tmp_path)
    shutil.rmtree(dst / remove)
    with pytest.raises(UserError, match=fragment) as e:
        load_model(str(dst), device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["numbers3", "numbers-flow"])
def test_a_bundled_model_not_trained_yet_says_how_to_train_it(tmp_path, monkeypatch, name):
    from diffcls_fast.models import bundled

    monkeypatch.setitem(bundled.BUNDLED, name, tmp_path / name)  # as in a checkout before training
    with pytest.raises(UserError) as e:
        load_model(name, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"the {name} model is not trained yet: run python scripts/train_bundled.py --model {name}")


def test_an_empty_model_name_is_refused_not_taken_as_the_current_directory(tmp_path, monkeypatch):
    from diffcls_fast.errors import UserError
    from diffcls_fast.models.loader import load_model

    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(UserError, match="--model is empty"):
            load_model(name)
