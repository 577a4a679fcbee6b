"""SD3 and SD3.5: ``transformer/`` (SD3Transformer2DModel), ``text_encoder/`` (CLIP-L) and ``text_encoder_2/``
(CLIP-G), both CLIPTextModelWithProjection, ``text_encoder_3/`` (T5EncoderModel), ``tokenizer/``,
``tokenizer_2/``, ``tokenizer_3/``, ``vae/`` (with shift_factor and scaling_factor) and ``scheduler/``
(FlowMatchEulerDiscreteScheduler with its ``shift``).

The condition, as the SD3 pipeline builds it: CLIP-L and CLIP-G penultimate hidden states concatenated on the
feature axis, zero-padded to T5's width, followed on the token axis by T5's last hidden state (256 tokens, the
pipeline's default, no mask); the pooled vector is CLIP-L's and CLIP-G's ``text_embeds`` side by side, packed
after the tokens (packed_cond.py). The model is rectified flow: denoise() returns the velocity (flow.py); the
network's timestep input is σ x num_train_timesteps, as the pipeline passes it.

SD3 saved without T5 (``text_encoder_3`` null in model_index.json, no folder) loads too: as the pipeline does, T5's
states are zeros (256 of them, the pipeline's max_sequence_length).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from .bundle import ModelBundle
from .common import make_image_encoder, make_unet_denoiser, parse_resolution, read_json, scheduler_config
from .family_parts import (
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
    meta_number,
    meta_of,
    t5_states,
    token_limit,
)
from .fingerprint import fingerprint_paths
from .flow import flow_sigmas, is_flow_config, snr_alphas_cumprod
from .packed_cond import CondLayout

TEXT = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
T5_TOKENS = 256  # the SD3 pipeline's max_sequence_length


def flow_schedule(folder: Path, sched_cfg: dict, image_seq_len: int | None = None) -> torch.Tensor:
    if not is_flow_config(sched_cfg):
        what = f"scheduler {sched_cfg.get('_class_name')!r}; this family is rectified flow"
        raise UserError(f"{folder}/scheduler: {what} (FlowMatchEulerDiscreteScheduler)")
    return flow_sigmas(sched_cfg, image_seq_len)


class SD3Network(torch.nn.Module):
    """``forward(sample, timestep index, cond) -> velocity``: the index becomes the network's timestep σ x T."""

    def __init__(self, net, layout: CondLayout, sigmas: torch.Tensor):
        super().__init__()
        self.net, self.layout = net, layout
        self.register_buffer("timestep_of", (sigmas * sigmas.numel()).float(), persistent=False)
        self.out_channels = int(net.config.out_channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        states, v = self.layout.unpack(cond)
        t = self.timestep_of[timestep]  # float32, as the pipeline passes it: fp16 would round σ x 1000 to 0.5 steps
        return self.net(sample, encoder_hidden_states=states, pooled_projections=v["pooled"], timestep=t).sample


def t5_left_out(folder: Path) -> bool:
    """Whether the folder is SD3 without its T5, as ``StableDiffusion3Pipeline(text_encoder_3=None)`` saves it:
    no ``text_encoder_3/`` and ``model_index.json`` listing it as null. A missing folder otherwise is an error."""
    if (folder / "text_encoder_3").exists():
        return False
    idx = folder / "model_index.json"
    listed = read_json(idx).get("text_encoder_3", "missing") if idx.is_file() else "missing"
    return isinstance(listed, list) and all(x is None for x in listed)


def load_sd3(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    from diffusers import SD3Transformer2DModel

    sched_cfg = scheduler_config(folder)
    sigmas = flow_schedule(folder, sched_cfg)
    meta = meta_of(folder)
    with_t5 = not t5_left_out(folder)
    layout_ = {
        "transformer": "",
        "text_encoder": "CLIP-L, CLIPTextModelWithProjection",
        "text_encoder_2": "CLIP-G, CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
        "tokenizer": "CLIP's tokenizer",
        "tokenizer_2": "CLIP's tokenizer",
        "tokenizer_3": "T5's tokenizer",
        "vae": "",
        "scheduler": "",
    }
    check_layout(folder, "SD3", {k: v for k, v in layout_.items() if with_t5 or not k.endswith("_3")})
    subs = ("tokenizer", "tokenizer_2", "tokenizer_3") if with_t5 else ("tokenizer", "tokenizer_2")
    toks = [load_tokenizer(folder, s) for s in subs]
    clip = ("CLIPTextModelWithProjection",)
    te_l = load_text_encoder(folder, "text_encoder", clip, dtype)
    te_g = load_text_encoder(folder, "text_encoder_2", clip, dtype)
    t5 = load_text_encoder(folder, "text_encoder_3", ("T5EncoderModel",), dtype) if with_t5 else None
    for sub, tok, te in zip(subs, toks, (te_l, te_g, t5)):
        check_vocab(folder, sub, tok, te)
    net = load_denoiser(SD3Transformer2DModel, folder, "transformer", dtype)
    cfg = net.config
    width = int(t5.config.d_model) if with_t5 else int(cfg.joint_attention_dim)
    clip_width = int(te_l.config.hidden_size) + int(te_g.config.hidden_size)
    if int(cfg.joint_attention_dim) != width or clip_width > width:
        what = f"joint_attention_dim is {cfg.joint_attention_dim}, T5's d_model {width}, CLIP-L + CLIP-G {clip_width}"
        raise UserError(f"{folder}/transformer: {what}; it must equal T5's and hold both CLIPs'")
    pooled_dim = int(te_l.config.projection_dim) + int(te_g.config.projection_dim)
    if int(cfg.pooled_projection_dim) != pooled_dim:
        what = f"pooled_projection_dim is {cfg.pooled_projection_dim} but the CLIP projections add up to {pooled_dim}"
        raise UserError(f"{folder}/transformer: {what}; they must be the same")
    vae = load_vae(folder, dtype, int(cfg.in_channels))
    for m in (net, te_l, te_g, t5, vae):
        if m is not None:
            m.to(device).eval().requires_grad_(False)
    latent_hw, resolution = latent_geometry(vae, parse_resolution(cfg.sample_size))
    clip_len = min(token_limit(toks[0], te_l), token_limit(toks[1], te_g))
    # without T5 the pipeline puts zeros of its max_sequence_length (256) in T5's place
    t5_len = meta_number(folder, meta, "max_tokens", token_limit(toks[2], t5, T5_TOKENS) if with_t5 else T5_TOKENS)
    layout = CondLayout(clip_len + t5_len, width, (("pooled", pooled_dim),))

    def encode(prompts: list[str]) -> torch.Tensor:
        s_l, p_l = clip_states(toks[0], te_l, prompts, clip_len, device)
        s_g, p_g = clip_states(toks[1], te_g, prompts, clip_len, device)
        if with_t5:
            s_t5, _ = t5_states(toks[2], t5, prompts, t5_len, device, masked=False)
        else:
            s_t5 = torch.zeros(len(prompts), t5_len, width, device=device)
        clip_states_ = F.pad(torch.cat([s_l, s_g], dim=-1), (0, width - clip_width))
        states = torch.cat([clip_states_, s_t5.to(clip_states_.dtype)], dim=-2)
        return layout.pack(states, pooled=torch.cat([p_l, p_g], dim=-1))

    raw = SD3Network(net, layout, sigmas).to(device).eval()

    acp = snr_alphas_cumprod(sigmas)
    text = [folder / c for c in TEXT if with_t5 or not c.endswith("_3")]
    dirs = [folder / "transformer", *text, folder / "vae", folder / "scheduler"]
    return ModelBundle(
        name=name,
        cond_kind="text",
        latent_shape=(int(cfg.in_channels), *latent_hw),
        image_resolution=resolution,
        image_channels=int(vae.config.in_channels),
        alphas_cumprod=acp,
        prediction_type="flow",
        sigmas=sigmas,
        device=device,
        dtype=dtype,
        fingerprint=fingerprint_paths(*dirs),
        text_fingerprint=fingerprint_paths(*text),  # every encoder and tokenizer
        encode_images=make_image_encoder(vae, resolution, int(vae.config.in_channels), device, dtype),
        encode_prompts=lambda prompts: in_chunks(encode, prompts, dtype),
        denoise=make_unet_denoiser(raw, acp, "flow", device),
        network=net,
        raw_module=raw,
        cond_shape=layout.shape,
        family="sd3",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        long_prompts=long_prompt_finder([("CLIP", toks[0], clip_len)] + ([("T5", toks[2], t5_len)] if with_t5 else [])),
        prompt_tokens=clip_len,
    )
