"""Each family's condition and denoiser output equal what its diffusers pipeline computes from the same folder:
the pipeline's own ``encode_prompt`` and the network called the way the pipeline calls it."""

import pytest
import torch

from diffcls_fast import load_model
from diffcls_fast.models.flux import image_ids, pack_latents, unpack_latents
from diffcls_fast.models.packed_cond import CondLayout

PROMPTS = ["a cat", "a small dog"]
PIXART = {
    "vae": "AutoencoderKL",
    "text_encoder": "T5EncoderModel",
    "tokenizer": "",
    "transformer": "PixArtTransformer2DModel",
    "scheduler": "DPMSolverMultistepScheduler",
}


def _components(folder, names):
    import diffusers
    import transformers
    from transformers import AutoTokenizer

    out = {}
    for sub, cls in names.items():
        if sub.startswith("tokenizer"):
            out[sub] = AutoTokenizer.from_pretrained(folder / sub)
        elif sub == "scheduler":
            out[sub] = getattr(diffusers, cls).from_pretrained(folder / sub)
        else:
            lib = diffusers if hasattr(diffusers, cls) else transformers
            out[sub] = getattr(lib, cls).from_pretrained(folder / sub).eval()
    return out


def _unpack(bundle, cond, extras):
    layout = CondLayout(bundle.cond_shape[0] - 1, bundle.cond_shape[1], extras)
    assert layout.shape == bundle.cond_shape
    return layout.unpack(cond)


@torch.no_grad()
def test_sdxl_matches_pipeline(family_folder):
    from diffusers import StableDiffusionXLPipeline

    folder = family_folder("sdxl")
    b = load_model(str(folder), device="cpu")
    c = _components(
        folder,
        {
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModel",
            "text_encoder_2": "CLIPTextModelWithProjection",
            "tokenizer": "",
            "tokenizer_2": "",
            "unet": "UNet2DConditionModel",
            "scheduler": "EulerDiscreteScheduler",
        },
    )
    pipe = StableDiffusionXLPipeline(**c, add_watermarker=False)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    cond = b.encode_prompts(PROMPTS)
    states, v = _unpack(b, cond, (("text_embeds", 16), ("time_ids", 6)))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["text_embeds"], pooled)
    # the native size, uncropped: what the pipeline computes for a 16 x 16 image at 16 x 16
    ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, text_encoder_projection_dim=16)
    torch.testing.assert_close(v["time_ids"], ids.expand(2, 6))
    x = torch.randn(2, *b.latent_shape)
    t = torch.tensor([10, 700])
    want = c["unet"](
        x, t, encoder_hidden_states=embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids.expand(2, 6)}
    ).sample
    torch.testing.assert_close(b.denoise(x, t, cond), want)


@torch.no_grad()
def test_sd3_matches_pipeline(family_folder):
    from diffusers import StableDiffusion3Pipeline

    folder = family_folder("sd3")
    b = load_model(str(folder), device="cpu")
    c = _components(
        folder,
        {
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModelWithProjection",
            "text_encoder_2": "CLIPTextModelWithProjection",
            "text_encoder_3": "T5EncoderModel",
            "tokenizer": "",
            "tokenizer_2": "",
            "tokenizer_3": "",
            "transformer": "SD3Transformer2DModel",
            "scheduler": "FlowMatchEulerDiscreteScheduler",
        },
    )
    pipe = StableDiffusion3Pipeline(**c)
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, PROMPTS, PROMPTS, device="cpu", do_classifier_free_guidance=False, max_sequence_length=24
    )
    cond = b.encode_prompts(PROMPTS)
    states, v = _unpack(b, cond, (("pooled", 16),))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["pooled"], pooled)
    # index t is σ = sigmas[t]; the pipeline passes the scheduler's timestep σ x 1000
    sched = c["scheduler"]
    k = 300  # the scheduler's k-th training timestep, from the noisy end
    t_index = 1000 - 1 - k
    assert abs(float(b.sigmas[t_index]) - float(sched.sigmas[k])) < 1e-6
    x = torch.randn(2, *b.latent_shape)
    want = c["transformer"](
        x, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sched.timesteps[k].expand(2)
    ).sample
    torch.testing.assert_close(b.denoise(x, torch.tensor([t_index] * 2), cond), want, atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_pixart_matches_pipeline(family_folder):
    from diffusers import PixArtAlphaPipeline

    folder = family_folder("pixart")
    b = load_model(str(folder), device="cpu")
    c = _components(folder, PIXART)
    pipe = PixArtAlphaPipeline(**c)
    embeds, mask, _, _ = pipe.encode_prompt(
        PROMPTS, do_classifier_free_guidance=False, device="cpu", max_sequence_length=24
    )
    cond = b.encode_prompts(PROMPTS)
    states, v = _unpack(b, cond, (("mask", 24),))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["mask"], mask.float())
    x = torch.randn(2, *b.latent_shape)
    t = torch.tensor([10, 700])
    added = {"resolution": torch.tensor([[16.0, 16.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
    want = c["transformer"](
        x, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=added
    ).sample
    torch.testing.assert_close(b.denoise(x, t, cond), want[:, :4])  # learned sigma: eps is the first half


@torch.no_grad()
def test_pixart_lower_cases_prompts_as_the_pipeline(family_folder):
    """PixArt's encode_prompt lower-cases and strips every prompt before T5 (case-sensitive) reads it."""
    from diffusers import PixArtAlphaPipeline

    folder = family_folder("pixart")
    b = load_model(str(folder), device="cpu")
    c = _components(folder, PIXART)
    prompts = ["A Cat", " a small Dog "]
    embeds, mask, _, _ = PixArtAlphaPipeline(**c).encode_prompt(
        prompts, do_classifier_free_guidance=False, device="cpu", max_sequence_length=24
    )
    states, v = _unpack(b, b.encode_prompts(prompts), (("mask", 24),))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["mask"], mask.float())
    torch.testing.assert_close(b.encode_prompts(prompts), b.encode_prompts(["a cat", "a small dog"]))


@torch.no_grad()
def test_flux_matches_pipeline(family_folder):
    from diffusers import FluxPipeline

    folder = family_folder("flux")
    b = load_model(str(folder), device="cpu")
    c = _components(
        folder,
        {
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModel",
            "text_encoder_2": "T5EncoderModel",
            "tokenizer": "",
            "tokenizer_2": "",
            "transformer": "FluxTransformer2DModel",
            "scheduler": "FlowMatchEulerDiscreteScheduler",
        },
    )
    pipe = FluxPipeline(**c)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, PROMPTS, device="cpu", max_sequence_length=24)
    cond = b.encode_prompts(PROMPTS)
    states, v = _unpack(b, cond, (("pooled", 16),))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["pooled"], pooled)
    x = torch.randn(2, *b.latent_shape)
    h, w = b.latent_shape[1:]
    packed = pipe._pack_latents(x, 2, 4, h, w)
    torch.testing.assert_close(pack_latents(x), packed)
    torch.testing.assert_close(unpack_latents(packed, h, w), x)
    torch.testing.assert_close(image_ids(h, w), pipe._prepare_latent_image_ids(2, h // 2, w // 2, "cpu", torch.float32))
    t = torch.tensor([100, 900])
    sig = b.sigmas[t].float()
    want = c["transformer"](
        hidden_states=packed,
        timestep=sig,
        guidance=torch.full((2,), 3.5),
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=text_ids,
        img_ids=image_ids(h, w),
    ).sample
    torch.testing.assert_close(b.denoise(x, t, cond), unpack_latents(want, h, w))


def test_flux_dynamic_shift_matches_scheduler(family_folder):
    """The σ table is the scheduler's for the image's token count (mu as FluxPipeline computes it)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    folder = family_folder("flux")
    b = load_model(str(folder), device="cpu")
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    seq = (b.latent_shape[1] // 2) * (b.latent_shape[2] // 2)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, 1000), mu=calculate_shift(seq))
    torch.testing.assert_close(b.sigmas, sched.sigmas[:-1].double().flip(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fam", ["sdxl", "sd3", "pixart", "flux"])
def test_family_name_and_prediction(family_folder, fam):
    b = load_model(str(family_folder(fam)), device="cpu")
    assert b.family == fam
    assert b.target == ("velocity" if fam in ("sd3", "flux") else "eps")


@torch.no_grad()
def test_sd3_without_t5_matches_pipeline(family_folder, tmp_path):
    """SD3 saved without T5 (model_index.json lists text_encoder_3 as null): zeros in T5's place, as the pipeline."""
    import json
    import shutil

    from diffusers import StableDiffusion3Pipeline

    folder = tmp_path / "sd3"
    shutil.copytree(family_folder("sd3"), folder)
    shutil.rmtree(folder / "text_encoder_3")
    shutil.rmtree(folder / "tokenizer_3")
    (folder / "model_index.json").write_text(json.dumps({"text_encoder_3": [None, None], "tokenizer_3": [None, None]}))
    b = load_model(str(folder), device="cpu")
    c = _components(
        folder,
        {
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModelWithProjection",
            "text_encoder_2": "CLIPTextModelWithProjection",
            "tokenizer": "",
            "tokenizer_2": "",
            "transformer": "SD3Transformer2DModel",
            "scheduler": "FlowMatchEulerDiscreteScheduler",
        },
    )
    pipe = StableDiffusion3Pipeline(**c, text_encoder_3=None, tokenizer_3=None)
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPTS, PROMPTS, PROMPTS, device="cpu", do_classifier_free_guidance=False
    )
    states, v = _unpack(b, b.encode_prompts(PROMPTS), (("pooled", 16),))
    torch.testing.assert_close(states, embeds)
    torch.testing.assert_close(v["pooled"], pooled)
