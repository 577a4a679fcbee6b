"""The pieces every family shares: weights and their checks, the VAE, the noise schedule, the denoiser wrapper
and class-id prompts (the device has its own file). Most go through load_model on edited folders: each used
to load silently wrong or fail with a traceback, and is now a working model or one UserError naming what is
wrong."""

import json
import shutil

import pytest
import torch
from PIL import Image

from diffcls_fast import UserError, load_model
from diffcls_fast.models.common import alphas_cumprod_from_config, make_class_encoder, v_to_eps, vae_dtype

from .helpers import digits_copy, edit_json, refused
from .tiny_folders import make_class_unet_folder, make_sd_folder


def test_pickle_weights_are_refused(tmp_path):
    dst = digits_copy(tmp_path)
    for f in (dst / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(UserError, match="safetensors only"):
        load_model(str(dst), device="cpu")


def test_weights_the_config_asks_for_but_the_file_lacks_are_refused(tmp_path):
    """transformers/diffusers only log "newly initialized" weights: a third text-encoder layer ran random."""
    m = digits_copy(tmp_path)
    layers = json.loads((m / "text_encoder" / "config.json").read_text())["num_hidden_layers"]
    edit_json(m / "text_encoder" / "config.json", num_hidden_layers=layers + 1)
    refused(m, r"text_encoder: the weights lack \d+ tensor\(s\) its config.json asks for \(e.g. \S*layers\.2\.")


def test_truncated_weights_are_one_line_naming_the_component(tmp_path):
    m = digits_copy(tmp_path)
    f = next((m / "text_encoder").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:1000])
    refused(m, "text_encoder: cannot load the text encoder")


def test_fp16_variant_only_folders_load(tmp_path):
    m = digits_copy(tmp_path)
    f = m / "unet" / "diffusion_pytorch_model.safetensors"
    f.rename(f.with_name("diffusion_pytorch_model.fp16.safetensors"))
    ref = load_model("digits", device="cpu")
    got = load_model(str(m), device="cpu")
    for a, b in zip(ref.network.state_dict().values(), got.network.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_config_that_is_not_a_json_object_is_one_line(tmp_path):
    # each used to fail with AttributeError ('list' object has no attribute 'get'), an internal error to the CLI
    cases = [("diffcls.json", "[]"), ("model_index.json", "[1]"), ("scheduler/scheduler_config.json", '"x"')]
    for i, (file, text) in enumerate(cases):
        m = digits_copy(tmp_path / str(i))
        (m / file).write_text(text)
        refused(m, rf"{file}: expected a JSON object \({{...}}\), found (list|str)")


def test_zero_terminal_snr_and_non_beta_schedules():
    acp = alphas_cumprod_from_config
    base = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    base["num_train_timesteps"] = 1000
    assert acp(base)[-1] > 1e-3
    assert acp({**base, "rescale_betas_zero_snr": True})[-1] < 1e-6  # was ignored: the plain schedule
    # a beta-family scheduler that names no betas means its defaults (DDPM's); an unknown one is refused
    plain = acp({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    torch.testing.assert_close(acp({"_class_name": "PNDMScheduler", "num_train_timesteps": 1000}), plain)
    with pytest.raises(UserError, match="not a beta"):
        acp({"_class_name": "MyScheduler", "num_train_timesteps": 1000})
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    for cfg in (flow, {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002}):
        with pytest.raises(UserError, match="not a beta"):
            acp(cfg)


def test_a_latent_model_without_its_vae_is_refused(tmp_path):
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    shutil.rmtree(sd / "vae")
    refused(sd, "takes 4 input channels and there is no vae/")
    (sd / "vae").write_text("")
    refused(sd, "vae: not a folder")
    (sd / "vae").unlink()
    pixel = make_sd_folder(tmp_path / "px", vae=False)
    index = {"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}
    (pixel / "model_index.json").write_text(json.dumps(index))
    refused(pixel, "lists a vae, but there is no vae/")


def test_non_square_latents_with_a_vae(tmp_path):
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    edit_json(sd / "unet" / "config.json", sample_size=[8, 12])
    m = load_model(str(sd), device="cpu")
    assert m.latent_shape == (4, 8, 12) and m.image_resolution == (16, 24)
    assert m.encode_images([Image.new("RGB", (40, 30))]).shape == (1, 4, 8, 12)
    cu = make_class_unet_folder(tmp_path / "cu")
    edit_json(cu / "unet" / "config.json", sample_size=[8, 12])
    m = load_model(str(cu), device="cpu")
    assert m.latent_shape == (3, 8, 12) and m.image_resolution == (8, 12)


def test_an_fp16_model_keeps_an_upcast_vae_in_float32(tmp_path):
    """SD VAEs set force_upcast: their encoder can overflow in fp16, so it runs in float32 (once per image)."""
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    m = load_model(str(sd), device="cpu", dtype="fp16")
    assert m.dtype == torch.float16 and m.network.dtype == torch.float16
    x = m.encode_images([Image.new("RGB", (20, 20), (200, 30, 30))])
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    edit_json(sd / "vae" / "config.json", force_upcast=False)
    assert vae_dtype(sd / "vae", torch.float16) == torch.float16
    assert vae_dtype(sd / "vae", torch.bfloat16) == torch.bfloat16


def test_v_to_eps_matches_diffusers():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([1, 100, 600, 999])
    x_t = s.add_noise(x0, eps, t)
    v = s.get_velocity(x0, eps, t)
    torch.testing.assert_close(v_to_eps(v, x_t, s.alphas_cumprod[t].double()), eps, atol=1e-4, rtol=1e-4)


def test_class_prompts_are_names_or_ids():
    encode = make_class_encoder(["cat", "dog", "car"], torch.device("cpu"))
    assert encode(["dog", " car ", "0", "2"]).tolist() == [1, 2, 0, 2]
    with pytest.raises(UserError, match=r"'3' is not one of this model's 3 classes \(give a name .* or an id 0..2\)"):
        encode(["3"])
    with pytest.raises(UserError, match="'²' is not one of this model's 3 classes"):
        encode(["²"])  # a digit to str.isdigit(), but not to int()
