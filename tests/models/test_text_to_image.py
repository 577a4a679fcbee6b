"""Text-to-image folders (Stable Diffusion layout, with or without a VAE), on the bundled digits model and
tiny random-weight folders."""

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.cli import main
from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.text_to_image import check_text_conditioning

from .helpers import FAST, classify_and_eval
from .tiny_folders import make_sd_folder


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu")


def test_round_trip_save_and_reload_gives_identical_outputs(digits, tmp_path):
    """Save the bundled folder's modules again (save_pretrained) and reload: same eps for the same inputs."""
    net = load_model("digits", device="cpu", implementation="diffusers").network  # save_pretrained: diffusers'
    dst = tmp_path / "copy"
    shutil.copytree(BUNDLED["digits"], dst)
    shutil.rmtree(dst / "unet")
    copy.deepcopy(net).half().save_pretrained(dst / "unet", safe_serialization=True)  # shipped weights are fp16
    m2 = load_model(str(dst), device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    prompts = ["a handwritten digit one"] * 5
    eps, eps2 = digits.denoise(x, t, digits.encode_prompts(prompts)), m2.denoise(x, t, m2.encode_prompts(prompts))
    torch.testing.assert_close(eps, eps2)
    assert load_model(str(dst), device="cpu").fingerprint == m2.fingerprint  # stable across loads


def test_encode_prompts_and_images(digits):
    from diffcls_fast.data.digits import load_split

    e = digits.encode_prompts(["a handwritten digit one", "the number 7"])
    assert e.shape[0] == 2 and e.dim() == 3
    assert not torch.allclose(e[0], e[1])
    pil, _, _ = load_split("heldout")
    x = digits.encode_images(pil[:3])
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_mismatched_channels(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    meta = json.loads((dst / "diffcls.json").read_text())
    meta["channels"] = 3
    (dst / "diffcls.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="channels"):
        load_model(str(dst), device="cpu")


def test_text_encoder_tokenizer_and_unet_must_fit():
    te = SimpleNamespace(hidden_size=64, vocab_size=100)
    check_text_conditioning("m", {"cross_attention_dim": 64}, te, 100)
    with pytest.raises(UserError, match="hidden size is 64 but the unet's cross_attention_dim is 32"):
        check_text_conditioning("m", {"cross_attention_dim": 32}, te, 100)
    with pytest.raises(UserError, match="addition_embed_type = 'text_time'.*not supported"):
        check_text_conditioning("m", {"cross_attention_dim": 64, "addition_embed_type": "text_time"}, te, 100)
    with pytest.raises(UserError, match="tokenizer has 514 tokens but the text encoder only 100"):
        check_text_conditioning("m", {"cross_attention_dim": 64}, te, 514)


def test_sd_layout_with_vae_and_clip(tmp_path, capsys):
    folder = make_sd_folder(tmp_path / "sd", vae=True)
    m = load_model(str(folder), device="cpu")
    assert m.latent_shape == (4, 8, 8) and m.image_resolution == 16 and m.cond_shape == (16, 32)
    classify_and_eval(folder, ["cat", "dog", "car"], tmp_path, capsys)
    # With a VAE too, an image gets the same noise alone or in a batch (the key hashes pixels, not latents).
    imgs = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(5)]
    opts = dict(policy="exhaustive", n_grid=4, use_cache=False)
    alone = DiffusionClassifier(m, **opts).classify([imgs[3]], ["cat", "dog"])[0]
    among = DiffusionClassifier(m, batch_size=8, **opts).classify(imgs, ["cat", "dog"])[3]
    assert alone.label == among.label
    torch.testing.assert_close(torch.tensor(alone.mean_errors), torch.tensor(among.mean_errors), rtol=1e-4, atol=1e-6)
    # eval with a prompt ensemble whose class names match the data folders
    csv = tmp_path / "prompts.csv"
    table = "classidx,prompt,classname\n0,a photo of a dog,dog\n0,a dog,dog\n1,a photo of a cat,cat\n2,a car,car\n"
    csv.write_text(table)
    data = str(tmp_path / "data")
    assert main(["eval", "--model", str(folder), "--data", data, "--prompts", str(csv), "--json", *FAST]) == 0
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
    classify_and_eval(folder, ["cat", "dog"], tmp_path, capsys)


def test_flow_match_scheduler_loads_as_rectified_flow(tmp_path, capsys):
    """A UNet folder whose scheduler is FlowMatchEulerDiscrete: σ from the config's shift, the noising (1 - σ, σ),
    the velocity target, and the network called with diffusers' FlowMatch timestep σ x num_train_timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffcls_fast.models.flow import flow_sigmas

    folder = make_sd_folder(tmp_path / "flow", vae=False, flow_shift=3.0)
    m = load_model(str(folder), device="cpu")
    assert (m.prediction_type, m.target, m.family, m.num_timesteps) == ("flow", "velocity", "sd", 1000)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    torch.testing.assert_close(m.sigmas, flow_sigmas(dict(sched.config, _class_name=type(sched).__name__)))
    a, b = m.noise_coefficients()
    torch.testing.assert_close((a, b), (1 - m.sigmas, m.sigmas))
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, *m.latent_shape, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    cond = m.encode_prompts(["a cat"] * 4)
    # the scheduler's training timesteps, high to low, are σ x 1000: index t is the t-th from the low end
    timestep = sched.timesteps.flip(0)[t].float()
    torch.testing.assert_close(timestep, (m.sigmas[t] * 1000).float())
    want = m.network(x_t, timestep, encoder_hidden_states=cond).sample
    torch.testing.assert_close(m.denoise(x_t, t, cond), want)
    assert m.raw_module is not None and m.raw_module.out_channels == 3  # what export traces: the same call
    torch.testing.assert_close(m.raw_module(x_t, t, cond), want)
    classify_and_eval(folder, ["cat", "dog"], tmp_path, capsys)


def test_a_ddpm_folder_is_not_flow(digits):
    assert (digits.prediction_type, digits.sigmas, digits.raw_module) == ("epsilon", None, None)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting needs the image's token count"),
        ({"invert_sigmas": True}, "invert_sigmas is not supported"),
        ({"shift": 0}, "shift > 0"),
    ],
)
def test_flow_match_options_the_unet_loader_refuses(tmp_path, change, fragment):
    from .helpers import edit_json, refused

    folder = make_sd_folder(tmp_path / "flow", vae=False, flow_shift=1.0)
    edit_json(folder / "scheduler" / "scheduler_config.json", **change)
    refused(folder, fragment)
