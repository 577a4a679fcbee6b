"""Every model family end to end through the public loader, on tiny random-weight folders."""

import json

import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.cli import main
from diffcls_fast.models.presets import PRESETS, preset_network

from .tiny_folders import make_class_unet_folder, make_dit_folder, make_image_folder, make_sd_folder

FAST = ["--policy", "ttest", "--min-scores", "3", "--max-scores", "6", "--no-cache"]


def _classify_and_eval(folder, classes, tmp_path, capsys, extra=()):
    data = make_image_folder(tmp_path / "data", classes)
    img = next((data / classes[0]).iterdir())
    assert main(["classify", str(img), "--model", str(folder), "--classes", ",".join(classes), "--json", *FAST, *extra]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] in classes and row["evaluations"] > 0
    assert main(["eval", "--model", str(folder), "--data", str(data), "--json", *FAST, *extra]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["images"] == 2 * len(classes) and 0.0 <= summary["accuracy"] <= 1.0
    return row, summary


def test_sd_layout_with_vae_and_clip(tmp_path, capsys):
    folder = make_sd_folder(tmp_path / "sd", vae=True)
    m = load_model(str(folder), device="cpu")
    assert m.latent_shape == (4, 8, 8) and m.image_resolution == 16 and m.cond_shape == (16, 32)
    _classify_and_eval(folder, ["cat", "dog", "car"], tmp_path, capsys)
    # With a VAE too, an image gets the same noise alone or in a batch (the key hashes pixels, not latents).
    imgs = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(5)]
    opts = dict(policy="exhaustive", n_grid=4, use_cache=False)
    alone = DiffusionClassifier(m, **opts).classify([imgs[3]], ["cat", "dog"])[0]
    among = DiffusionClassifier(m, batch_size=8, **opts).classify(imgs, ["cat", "dog"])[3]
    assert alone.label == among.label
    torch.testing.assert_close(torch.tensor(alone.mean_errors), torch.tensor(among.mean_errors), rtol=1e-4, atol=1e-6)
    # eval with a prompt ensemble whose class names match the data folders
    csv = tmp_path / "prompts.csv"
    csv.write_text("classidx,prompt,classname\n0,a photo of a dog,dog\n0,a dog,dog\n1,a photo of a cat,cat\n2,a car,car\n")
    assert main(["eval", "--model", str(folder), "--data", str(tmp_path / "data"), "--prompts", str(csv), "--json", *FAST]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["images"] == 6


def test_v_prediction_converted_consistently_with_diffusers(tmp_path, capsys):
    from diffusers import DDPMScheduler

    folder = make_sd_folder(tmp_path / "sdv", vae=True, prediction_type="v_prediction")
    m = load_model(str(folder), device="cpu")
    assert m.prediction_type == "v_prediction"
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    x_t = torch.randn(4, *m.latent_shape)
    t = torch.tensor([5, 200, 600, 990])
    cond = m.encode_prompts(["a cat"] * 4)
    v_hat = m.network(x_t, t, encoder_hidden_states=cond).sample
    eps_hat = m.denoise(x_t, t, cond)
    # diffusers' own v-prediction x0 estimate (DDPMScheduler.step); x_t = a x0_hat + b eps_hat must hold
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = abar.sqrt() * x_t - (1 - abar).sqrt() * v_hat
    torch.testing.assert_close(abar.sqrt() * x0_hat + (1 - abar).sqrt() * eps_hat, x_t, atol=1e-5, rtol=1e-5)
    _classify_and_eval(folder, ["cat", "dog"], tmp_path, capsys)


def test_dit_with_learned_sigma_prunes(tmp_path, capsys):
    folder = make_dit_folder(tmp_path / "dit", n_classes=5)
    m = load_model(str(folder), device="cpu")
    assert m.cond_kind == "class" and m.family == "dit" and m.class_names[2] == "class2"
    x = torch.randn(3, *m.latent_shape)
    out = m.denoise(x, torch.tensor([1, 2, 3]), m.encode_prompts(["class0", "4", "class2"]))
    assert out.shape == x.shape  # the eps half of the 8 learned-sigma channels
    with pytest.raises(UserError, match="not one of this model's 5 classes"):
        m.encode_prompts(["class9"])
    _classify_and_eval(folder, ["class0", "class1", "class3"], tmp_path, capsys)
    # adaptive prunes DiT too
    r = DiffusionClassifier(m, "adaptive", n_samples=[4, 8], to_keep=[2, 1], use_cache=False).classify([torch.zeros(3, 16, 16)], ["class0", "class1", "class2", "class3", "class4"])[0]
    assert r.evaluations == 4 * 5 + 4 * 2


def test_class_embedding_unet(tmp_path, capsys):
    folder = make_class_unet_folder(tmp_path / "cu", n_classes=4)
    m = load_model(str(folder), device="cpu")
    assert m.cond_kind == "class" and m.family == "class-unet" and m.class_names == ["0", "1", "2", "3"]
    _classify_and_eval(folder, ["0", "2", "3"], tmp_path, capsys)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_published_parameter_counts(name):
    net = preset_network(name, device="meta")
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - PRESETS[name]["params"]) / PRESETS[name]["params"] < 1e-3, n


def test_eval_refuses_presets(capsys):
    assert main(["eval", "--model", "preset:sd2-base"]) == 2
    assert "random weights (timing only)" in capsys.readouterr().err


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset"):
        load_model("preset:sd3", device="cpu")
