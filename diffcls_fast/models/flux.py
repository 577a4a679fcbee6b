"""Flux: ``transformer/`` (FluxTransformer2DModel), ``text_encoder/`` (CLIPTextModel), ``text_encoder_2/``
(T5EncoderModel), ``tokenizer/``, ``tokenizer_2/``, ``vae/`` (16 channels, shift_factor) and ``scheduler/``
(FlowMatchEulerDiscreteScheduler, shift dynamic in the image's token count).

As the Flux pipeline runs it:

* condition: T5's last hidden state (512 tokens for a guidance-distilled model such as FLUX.1-dev, 256 for one
  without guidance embeddings such as FLUX.1-schnell; diffcls.json ``max_tokens`` overrides), no mask; CLIP's
  ``pooler_output`` as the pooled vector, packed after the tokens (packed_cond.py);
* latents: the VAE's [C, h, w] latent is the engine's x0; the wrapper packs it into 2x2 patches ([h/2 * w/2,
  4C] tokens, with their (0, row, col) position ids) for the transformer and unpacks the velocity it predicts;
* timestep: σ itself (the pipeline's timestep / 1000);
* guidance: a guidance-distilled model (``guidance_embeds``) was trained to take the classifier-free guidance
  scale as an input. It runs with a fixed value, 3.5 (the FLUX.1-dev pipeline's default), unless diffcls.json
  sets ``guidance``: every class is scored at the same value, so it shifts all errors alike;
* resolution: Flux configs carry no native size; 1024 px (the pipeline's default) unless diffcls.json sets
  ``resolution``. The σ shift is computed for that size's token count.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .bundle import ModelBundle
from .common import make_image_encoder, make_unet_denoiser, parse_resolution, scheduler_config
from .family_parts import (
    check_layout,
    check_vocab,
    clip_states,
    in_chunks,
    load_denoiser,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    long_prompt_finder,
    meta_number,
    meta_of,
    t5_states,
    token_limit,
)
from .fingerprint import fingerprint_paths
from .flow import snr_alphas_cumprod
from .packed_cond import CondLayout
from .sd3 import flow_schedule

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default (FLUX.1-dev)
DEFAULT_RESOLUTION = 1024


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C]: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """[h/2 * w/2, 3] position ids (0, row, col) of the packed tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxNetwork(torch.nn.Module):
    """``forward(sample [B, C, h, w], timestep index, cond) -> velocity [B, C, h, w]``: packs the latent into 2x2
    patches, passes σ, the position ids and the fixed guidance, and unpacks the prediction."""

    def __init__(self, net, layout: CondLayout, sigmas: torch.Tensor, hw: tuple[int, int], guidance: float | None):
        super().__init__()
        self.net, self.layout, self.hw, self.guidance = net, layout, hw, guidance
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("img_ids", image_ids(*hw), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(layout.tokens, 3), persistent=False)
        self.out_channels = int(net.config.in_channels) // 4

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        states, v = self.layout.unpack(cond)
        g = None
        if self.guidance is not None:
            g = torch.full((sample.shape[0],), self.guidance, device=sample.device, dtype=torch.float32)
        out = self.net(
            hidden_states=pack_latents(sample),
            encoder_hidden_states=states,
            pooled_projections=v["pooled"],
            timestep=self.sigmas[timestep],  # σ and the guidance in float32, as the pipeline passes them
            img_ids=self.img_ids.to(sample.dtype),
            txt_ids=self.txt_ids.to(sample.dtype),
            guidance=g,
        ).sample
        return unpack_latents(out, *self.hw)


def load_flux(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    from diffusers import FluxTransformer2DModel

    check_layout(
        folder,
        "Flux",
        {
            "transformer": "",
            "text_encoder": "CLIPTextModel",
            "text_encoder_2": "T5EncoderModel",
            "tokenizer": "CLIP's tokenizer",
            "tokenizer_2": "T5's tokenizer",
            "vae": "",
            "scheduler": "",
        },
    )
    sched_cfg = scheduler_config(folder)
    meta = meta_of(folder)
    tok_c, tok_t = load_tokenizer(folder, "tokenizer"), load_tokenizer(folder, "tokenizer_2")
    clip = load_text_encoder(folder, "text_encoder", ("CLIPTextModel",), dtype)
    t5 = load_text_encoder(folder, "text_encoder_2", ("T5EncoderModel",), dtype)
    check_vocab(folder, "tokenizer", tok_c, clip)
    check_vocab(folder, "tokenizer_2", tok_t, t5)
    net = load_denoiser(FluxTransformer2DModel, folder, "transformer", dtype)
    cfg = net.config
    width = int(t5.config.d_model)
    if int(cfg.joint_attention_dim) != width:
        what = f"joint_attention_dim is {cfg.joint_attention_dim} but T5's d_model is {width}"
        raise UserError(f"{folder}/transformer: {what}; they must be the same")
    pooled_dim = int(clip.config.hidden_size)
    if int(cfg.pooled_projection_dim) != pooled_dim:
        what = f"pooled_projection_dim is {cfg.pooled_projection_dim} but CLIP's hidden size is {pooled_dim}"
        raise UserError(f"{folder}/transformer: {what}; they must be the same")
    if int(cfg.patch_size) != 1 or int(cfg.in_channels) % 4:
        what = f"patch_size {cfg.patch_size}, in_channels {cfg.in_channels}"
        raise UserError(f"{folder}/transformer: {what}; Flux takes 2x2-packed latents (patch_size 1, 4 x channels)")
    latent_ch = int(cfg.in_channels) // 4
    vae = load_vae(folder, dtype, latent_ch)
    for m in (net, clip, t5, vae):
        m.to(device).eval().requires_grad_(False)
    resolution = parse_resolution(meta.get("resolution", DEFAULT_RESOLUTION))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    ph, pw = (resolution, resolution) if isinstance(resolution, int) else resolution
    if ph % (2 * scale) or pw % (2 * scale):
        what = f"resolution {resolution} is not a multiple of {2 * scale}"
        raise UserError(f"{folder}: {what} (the VAE's scale x Flux's 2x2 packing)")
    h, w = ph // scale, pw // scale
    sigmas = flow_schedule(folder, sched_cfg, image_seq_len=(h // 2) * (w // 2))
    guided = bool(cfg.guidance_embeds)
    guidance = meta_number(folder, meta, "guidance", DEFAULT_GUIDANCE, kind=float, minimum=0)
    clip_len = token_limit(tok_c, clip)
    t5_len = meta_number(folder, meta, "max_tokens", token_limit(tok_t, t5, 512 if guided else 256))
    layout = CondLayout(t5_len, width, (("pooled", pooled_dim),))

    def encode(prompts: list[str]) -> torch.Tensor:
        _, pooled = clip_states(tok_c, clip, prompts, clip_len, device)
        states, _ = t5_states(tok_t, t5, prompts, t5_len, device, masked=False)
        return layout.pack(states, pooled=pooled.to(states.dtype))

    raw = FluxNetwork(net, layout, sigmas, (h, w), guidance if guided else None).to(device).eval()

    acp = snr_alphas_cumprod(sigmas)
    dirs = [folder / c for c in ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")]
    dirs += [folder / "vae", folder / "scheduler"]
    return ModelBundle(
        name=name,
        cond_kind="text",
        latent_shape=(latent_ch, h, w),
        image_resolution=resolution,
        image_channels=int(vae.config.in_channels),
        alphas_cumprod=acp,
        prediction_type="flow",
        sigmas=sigmas,
        device=device,
        dtype=dtype,
        # diffcls.json sets the resolution (and so the σ shift) and the guidance: part of the model's identity
        fingerprint=fingerprint_paths(
            *dirs, *([folder / "diffcls.json"] if (folder / "diffcls.json").is_file() else [])
        ),
        text_fingerprint=fingerprint_paths(*dirs[1:5]),
        encode_images=make_image_encoder(vae, resolution, int(vae.config.in_channels), device, dtype),
        encode_prompts=lambda prompts: in_chunks(encode, prompts, dtype),
        denoise=make_unet_denoiser(raw, acp, "flow", device),
        network=net,
        raw_module=raw,
        cond_shape=layout.shape,
        family="flux",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        long_prompts=long_prompt_finder([("CLIP", tok_c, clip_len), ("T5", tok_t, t5_len)]),
        prompt_tokens=t5_len,
    )
