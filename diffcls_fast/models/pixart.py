"""PixArt-α and PixArt-Σ: ``transformer/`` (PixArtTransformer2DModel), ``text_encoder/`` (T5EncoderModel),
``tokenizer/``, ``vae/`` and ``scheduler/`` (a DDPM-family schedule; the network predicts eps with a learned
sigma: the first half of its output channels is eps, which make_unet_denoiser keeps).

As the PixArt pipelines encode prompts: the prompt lower-cased and stripped (``_text_preprocessing``, which
``encode_prompt`` always applies, as PixArt's own T5 embedder does; T5's tokenizer is case-sensitive), then
T5's last hidden state with the padding mask, which the transformer also gets (``encoder_attention_mask``); it
is packed after the tokens (packed_cond.py). Token count: 120, PixArt-α's training length, unless diffcls.json
sets ``max_tokens`` (PixArt-Σ: 300). The rest of the pipelines' optional caption cleaning (``clean_caption``:
stripping URLs and markup, with bs4 and ftfy) is not applied: a class prompt is plain text already.

PixArt-α at 1024 px (``use_additional_conditions``: its sample_size 128 makes it so by default) also takes the
image's ``resolution`` (H, W) and ``aspect_ratio`` H / W; they are the model's native size, the size the engine
feeds every image at, constant for the model, so the denoiser wrapper adds them rather than the condition.
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
    check_layout,
    check_vocab,
    in_chunks,
    latent_geometry,
    load_denoiser,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    long_prompt_finder,
    meta_of,
    t5_states,
    token_limit,
)
from .fingerprint import fingerprint_paths
from .packed_cond import CondLayout

ALPHA_TOKENS = 120  # PixArt-α's max_sequence_length (PixArt-Σ: 300, set max_tokens in diffcls.json)


def pixart_text(prompts: list[str]) -> list[str]:
    """The prompts as the PixArt pipelines hand them to T5: lower-cased and stripped."""
    return [p.lower().strip() for p in prompts]


class PixArtNetwork(torch.nn.Module):
    """``forward(sample, timestep, cond) -> eps and learned sigma``, with the mask from the packed condition and
    PixArt-α's size conditions (the native size: constant, so buffers)."""

    def __init__(self, net, layout: CondLayout, hw: tuple[int, int]):
        super().__init__()
        self.net, self.layout = net, layout
        self.sized = bool(net.use_additional_conditions)
        self.register_buffer("resolution", torch.tensor([[float(hw[0]), float(hw[1])]]), persistent=False)
        self.register_buffer("aspect_ratio", torch.tensor([[float(hw[0]) / float(hw[1])]]), persistent=False)
        self.out_channels = int(net.config.out_channels or net.config.in_channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        states, v = self.layout.unpack(cond)
        added = {"resolution": None, "aspect_ratio": None}
        if self.sized:
            n = sample.shape[0]
            added = {
                "resolution": self.resolution.expand(n, 2).to(sample.dtype),
                "aspect_ratio": self.aspect_ratio.expand(n, 1).to(sample.dtype),
            }
        mask = v["mask"]
        return self.net(
            sample,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            timestep=timestep,
            added_cond_kwargs=added,
        ).sample


def load_pixart(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    from diffusers import PixArtTransformer2DModel

    check_layout(
        folder,
        "PixArt",
        {
            "transformer": "",
            "text_encoder": "T5EncoderModel",
            "tokenizer": "T5's tokenizer",
            "vae": "",
            "scheduler": "",
        },
    )
    sched_cfg = scheduler_config(folder)
    acp = alphas_cumprod_from_config(sched_cfg)
    pred_type = sched_cfg.get("prediction_type", "epsilon")
    meta = meta_of(folder)
    tok = load_tokenizer(folder, "tokenizer")
    t5 = load_text_encoder(folder, "text_encoder", ("T5EncoderModel",), dtype)
    check_vocab(folder, "tokenizer", tok, t5)
    net = load_denoiser(PixArtTransformer2DModel, folder, "transformer", dtype)
    cfg = net.config
    width = int(t5.config.d_model)
    if int(cfg.caption_channels or 0) != width:
        what = f"caption_channels is {cfg.caption_channels} but T5's d_model is {width}"
        raise UserError(f"{folder}/transformer: {what}; they must be the same")
    out_ch = int(cfg.out_channels or cfg.in_channels)
    if out_ch not in (int(cfg.in_channels), 2 * int(cfg.in_channels)):
        what = f"{out_ch} output channels for {cfg.in_channels} input channels"
        raise UserError(f"{folder}/transformer: {what}; expected the same (eps) or twice (eps and learned sigma)")
    vae = load_vae(folder, dtype, int(cfg.in_channels))
    for m in (net, t5, vae):
        m.to(device).eval().requires_grad_(False)
    latent_hw, resolution = latent_geometry(vae, parse_resolution(cfg.sample_size))
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    limit = token_limit(tok, t5)
    max_len = meta.get("max_tokens", min(ALPHA_TOKENS, limit))
    if not isinstance(max_len, int) or not 2 <= max_len <= limit:
        raise UserError(f"{folder}/diffcls.json: max_tokens must be an integer in 2..{limit}, got {max_len!r}")
    layout = CondLayout(max_len, width, (("mask", max_len),))

    def encode(prompts: list[str]) -> torch.Tensor:
        states, mask = t5_states(tok, t5, pixart_text(prompts), max_len, device, masked=True)
        return layout.pack(states, mask=mask)

    raw = PixArtNetwork(net, layout, (h, w)).to(device).eval()

    dirs = [folder / c for c in ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")]
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
        # the tag: embeddings cached before prompts were lower-cased are not reused
        text_fingerprint=fingerprint_paths(*dirs[1:3]) + "-lc",
        encode_images=make_image_encoder(vae, resolution, int(vae.config.in_channels), device, dtype),
        encode_prompts=lambda prompts: in_chunks(encode, prompts, dtype),
        denoise=make_unet_denoiser(raw, acp, pred_type, device),
        network=net,
        raw_module=raw,
        cond_shape=layout.shape,
        family="pixart",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        long_prompts=long_prompt_finder([("T5", tok, max_len)], prepare=pixart_text),
        prompt_tokens=max_len,
    )
