"""SDXL: ``unet/`` (UNet2DConditionModel, addition_embed_type "text_time"), ``text_encoder/`` (CLIPTextModel),
``text_encoder_2/`` (CLIPTextModelWithProjection), ``tokenizer/``, ``tokenizer_2/``, ``vae/``, ``scheduler/``.

The condition, as the SDXL pipeline builds it: both encoders' penultimate hidden states concatenated on the
feature axis ([77, 768 + 1280]), plus ``text_embeds`` (text_encoder_2's pooled, projected vector) and
``time_ids``, packed after the tokens (packed_cond.py).

``time_ids`` = (original_size, crop top-left, target_size) = (H, W, 0, 0, H, W) with H x W the model's native
resolution (the unet's sample_size times the VAE's scale: 1024 x 1024 for SDXL base). Why: the engine resizes
every image to exactly that resolution, so the denoiser sees a full, uncropped image at its native size, and
that is what these ids say. A smaller original size or a crop offset would tell SDXL to predict a low-resolution
or cropped-looking image (its micro-conditioning), a bias unrelated to the class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .bundle import ModelBundle
from .common import (
    alphas_cumprod_from_config,
    make_image_encoder,
    make_unet_denoiser,
    parse_resolution,
    scheduler_config,
)
from .family_parts import (
    check_dim,
    check_layout,
    check_vocab,
    clip_states,
    in_chunks,
    latent_geometry,
    load_denoiser,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    long_prompt_finder,
    meta_of,
    token_limit,
)
from .fingerprint import fingerprint_paths
from .packed_cond import CondLayout

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")


def sdxl_time_ids(h: int, w: int) -> list[float]:
    """(original H, W, crop top, left, target H, W) for a full, uncropped image at the native size (see above)."""
    return [float(h), float(w), 0.0, 0.0, float(h), float(w)]


class SDXLNetwork(torch.nn.Module):
    """``forward(sample, timestep, cond) -> eps`` over a packed condition: what the engine and export call."""

    def __init__(self, unet, layout: CondLayout):
        super().__init__()
        self.unet, self.layout = unet, layout
        self.out_channels = int(unet.config.out_channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        states, v = self.layout.unpack(cond)
        added = {"text_embeds": v["text_embeds"], "time_ids": v["time_ids"]}
        return self.unet(sample, timestep, encoder_hidden_states=states, added_cond_kwargs=added).sample


def load_sdxl(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    from diffusers import UNet2DConditionModel

    check_layout(
        folder,
        "SDXL",
        {
            "unet": "",
            "text_encoder": "CLIPTextModel",
            "text_encoder_2": "CLIPTextModelWithProjection",
            "tokenizer": "CLIP's tokenizer",
            "tokenizer_2": "CLIP's tokenizer",
            "vae": "",
            "scheduler": "",
        },
    )
    sched_cfg = scheduler_config(folder)
    tok1, tok2 = load_tokenizer(folder, "tokenizer"), load_tokenizer(folder, "tokenizer_2")
    te1 = load_text_encoder(folder, "text_encoder", ("CLIPTextModel",), dtype)
    te2 = load_text_encoder(folder, "text_encoder_2", ("CLIPTextModelWithProjection",), dtype)
    unet = load_denoiser(UNet2DConditionModel, folder, "unet", dtype)
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        what = f"addition_embed_type {cfg.addition_embed_type!r}; an SDXL unet has 'text_time'"
        raise UserError(f"{folder}/unet: {what}")
    check_vocab(folder, "tokenizer", tok1, te1)
    check_vocab(folder, "tokenizer_2", tok2, te2)
    width = int(te1.config.hidden_size) + int(te2.config.hidden_size)
    check_dim(folder, "unet cross_attention_dim", cfg.cross_attention_dim, width, "the two text encoders' hidden sizes")
    pooled_dim = int(te2.config.projection_dim)
    n_ids = 6
    want = pooled_dim + n_ids * int(cfg.addition_time_embed_dim)
    check_dim(
        folder,
        "unet projection_class_embeddings_input_dim",
        cfg.projection_class_embeddings_input_dim,
        want,
        f"text_encoder_2's projection_dim + {n_ids} time ids x addition_time_embed_dim",
    )
    vae = load_vae(folder, dtype, int(cfg.in_channels))
    for m in (unet, te1, te2, vae):
        m.to(device).eval().requires_grad_(False)
    latent_hw, resolution = latent_geometry(vae, parse_resolution(cfg.sample_size))
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    max_len = min(token_limit(tok1, te1), token_limit(tok2, te2))
    layout = CondLayout(max_len, width, (("text_embeds", pooled_dim), ("time_ids", n_ids)))
    time_ids = torch.tensor(sdxl_time_ids(h, w), device=device)

    def encode(prompts: list[str]) -> torch.Tensor:
        s1, _ = clip_states(tok1, te1, prompts, max_len, device)
        s2, pooled = clip_states(tok2, te2, prompts, max_len, device)
        ids = time_ids.expand(len(prompts), n_ids)
        return layout.pack(torch.cat([s1, s2], dim=-1), text_embeds=pooled, time_ids=ids)

    raw = SDXLNetwork(unet, layout).eval()
    acp = alphas_cumprod_from_config(sched_cfg)
    pred_type = sched_cfg.get("prediction_type", "epsilon")
    meta = meta_of(folder)
    dirs = [folder / c for c in COMPONENTS]
    return ModelBundle(
        name=name,
        cond_kind="text",
        latent_shape=(int(cfg.in_channels), *latent_hw),
        image_resolution=resolution,
        image_channels=int(vae.config.in_channels),
        alphas_cumprod=acp,
        prediction_type=pred_type,
        device=device,
        dtype=dtype,
        fingerprint=fingerprint_paths(*dirs),
        # the embedding cache key: both encoders and tokenizers, and the configs that set the native size the cached
        # time ids hold (the unet's sample_size times the VAE's scale)
        text_fingerprint=fingerprint_paths(*dirs[1:5], folder / "unet" / "config.json", folder / "vae" / "config.json"),
        encode_images=make_image_encoder(vae, resolution, int(vae.config.in_channels), device, dtype),
        encode_prompts=lambda prompts: in_chunks(encode, prompts, dtype),
        denoise=make_unet_denoiser(raw, acp, pred_type, device),
        network=unet,
        raw_module=raw,
        cond_shape=layout.shape,
        family="sdxl",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        long_prompts=long_prompt_finder([("CLIP", tok1, max_len)]),
        prompt_tokens=max_len,
    )
