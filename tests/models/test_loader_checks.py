"""User model folders that used to load silently wrong or fail with a traceback: each is now a
working model or one UserError naming what is wrong (found by loading real variations of the layouts)."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from diffcls_fast import UserError, load_model
from diffcls_fast.models.loader import BUNDLED, alphas_cumprod_from_config, check_text_conditioning, vae_dtype

from .tiny_folders import make_class_unet_folder, make_dit_folder, make_sd_folder


def _digits_copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    return dst


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _refused(folder, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_weights_the_config_asks_for_but_the_file_lacks_are_refused(tmp_path):
    """transformers/diffusers only log "newly initialized" weights: a third text-encoder layer ran random."""
    m = _digits_copy(tmp_path)
    layers = json.loads((m / "text_encoder" / "config.json").read_text())["num_hidden_layers"]
    _edit_json(m / "text_encoder" / "config.json", num_hidden_layers=layers + 1)
    _refused(m, r"text_encoder: the weights lack \d+ tensor\(s\) its config.json asks for \(e.g. \S*layers\.2\.")


def test_truncated_weights_are_one_line_naming_the_component(tmp_path):
    m = _digits_copy(tmp_path)
    f = next((m / "text_encoder").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:1000])
    _refused(m, "text_encoder: cannot load the text encoder")


def test_fp16_variant_only_folders_load(tmp_path):
    m = _digits_copy(tmp_path)
    f = m / "unet" / "diffusion_pytorch_model.safetensors"
    f.rename(f.with_name("diffusion_pytorch_model.fp16.safetensors"))
    ref = load_model("digits", device="cpu")
    got = load_model(str(m), device="cpu")
    for a, b in zip(ref.network.state_dict().values(), got.network.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_zero_terminal_snr_and_non_beta_schedules():
    base = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    assert alphas_cumprod_from_config(base)[-1] > 1e-3
    assert alphas_cumprod_from_config({**base, "rescale_betas_zero_snr": True})[-1] < 1e-6  # was ignored: the plain schedule
    # a beta-family scheduler that names no betas means its defaults (DDPM's); an unknown one is refused
    plain = alphas_cumprod_from_config({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    torch.testing.assert_close(alphas_cumprod_from_config({"_class_name": "PNDMScheduler", "num_train_timesteps": 1000}), plain)
    with pytest.raises(UserError, match="not a beta"):
        alphas_cumprod_from_config({"_class_name": "MyScheduler", "num_train_timesteps": 1000})
    for cfg in ({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}, {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002}):
        with pytest.raises(UserError, match="not a beta"):
            alphas_cumprod_from_config(cfg)


def test_a_latent_model_without_its_vae_is_refused(tmp_path):
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    shutil.rmtree(sd / "vae")
    _refused(sd, "takes 4 input channels and there is no vae/")
    (sd / "vae").write_text("")
    _refused(sd, "vae: not a folder")
    (sd / "vae").unlink()
    pixel = make_sd_folder(tmp_path / "px", vae=False)
    (pixel / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}))
    _refused(pixel, "lists a vae, but there is no vae/")


def test_non_square_latents_with_a_vae(tmp_path):
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    _edit_json(sd / "unet" / "config.json", sample_size=[8, 12])
    m = load_model(str(sd), device="cpu")
    assert m.latent_shape == (4, 8, 12) and m.image_resolution == (16, 24)
    assert m.encode_images([Image.new("RGB", (40, 30))]).shape == (1, 4, 8, 12)
    cu = make_class_unet_folder(tmp_path / "cu")
    _edit_json(cu / "unet" / "config.json", sample_size=[8, 12])
    m = load_model(str(cu), device="cpu")
    assert m.latent_shape == (3, 8, 12) and m.image_resolution == (8, 12)


def test_text_encoder_tokenizer_and_unet_must_fit():
    te = SimpleNamespace(hidden_size=64, vocab_size=100)
    check_text_conditioning("m", {"cross_attention_dim": 64}, te, 100)
    with pytest.raises(UserError, match="hidden size is 64 but the unet's cross_attention_dim is 32"):
        check_text_conditioning("m", {"cross_attention_dim": 32}, te, 100)
    with pytest.raises(UserError, match="addition_embed_type = 'text_time'.*not supported"):
        check_text_conditioning("m", {"cross_attention_dim": 64, "addition_embed_type": "text_time"}, te, 100)
    with pytest.raises(UserError, match="tokenizer has 514 tokens but the text encoder only 100"):
        check_text_conditioning("m", {"cross_attention_dim": 64}, te, 514)


def test_only_a_dit_transformer_is_loaded_as_dit(tmp_path):
    dit = make_dit_folder(tmp_path / "dit")
    _edit_json(dit / "transformer" / "config.json", _class_name="SD3Transformer2DModel")
    _refused(dit, "SD3Transformer2DModel is not a class-conditional DiT")


def test_broken_class_names_are_one_line(tmp_path):
    dit = make_dit_folder(tmp_path / "dit", n_classes=3)
    (dit / "classes.txt").write_bytes(b"a\n\xff\xfeb\nc\n")
    _refused(dit, "classes.txt: not UTF-8 text")
    (dit / "classes.txt").unlink()
    (dit / "model_index.json").write_text(json.dumps({"id2label": {"1": "a", "2": "b", "3": "c"}}))
    _refused(dit, "id2label's keys must be the class ids")
    (dit / "model_index.json").write_text("{not json")
    _refused(dit, "model_index.json: cannot read JSON")


def test_an_fp16_model_keeps_an_upcast_vae_in_float32(tmp_path):
    """SD VAEs set force_upcast: their encoder can overflow in fp16, so it runs in float32 (once per image)."""
    sd = make_sd_folder(tmp_path / "sd", vae=True)
    m = load_model(str(sd), device="cpu", dtype="fp16")
    assert m.dtype == torch.float16 and m.network.dtype == torch.float16
    x = m.encode_images([Image.new("RGB", (20, 20), (200, 30, 30))])
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    _edit_json(sd / "vae" / "config.json", force_upcast=False)
    assert vae_dtype(sd / "vae", torch.float16) == torch.float16 and vae_dtype(sd / "vae", torch.bfloat16) == torch.bfloat16
