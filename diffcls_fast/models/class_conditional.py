"""Class-conditional models: diffusers DiT (``transformer/``) and ``UNet2DModel`` with class embeddings.

The condition is a class id. Class names come from ``classes.txt`` in the
folder (one per line), or the DiT pipeline's ``id2label`` in
``model_index.json``; otherwise the names are the ids themselves ("0", "1", ...).
A prompt for such a model is a class name or an id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from .bundle import ModelBundle
from .fingerprint import fingerprint_paths
from .loader import DIFFUSERS_KW, _need, _scheduler_config, alphas_cumprod_from_config, make_image_encoder, make_unet_denoiser, quiet_loading, raw_network_call


def class_names_of(folder: Path, n_classes: int) -> list[str]:
    txt = folder / "classes.txt"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != n_classes:
            raise UserError(f"{txt}: {len(names)} names for a model with {n_classes} classes")
        return names
    idx = folder / "model_index.json"
    if idx.is_file():
        id2label = json.loads(idx.read_text()).get("id2label")
        if isinstance(id2label, dict) and len(id2label) == n_classes:
            # DiT's labels may hold synonyms ("tench, Tinca tinca"): keep the first.
            return [str(id2label[str(i)]).split(",")[0].strip() for i in range(n_classes)]
    return [str(i) for i in range(n_classes)]


def make_class_encoder(names: list[str], device: torch.device):
    lookup = {n: i for i, n in enumerate(names)}
    n = len(names)

    def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
        ids = []
        for p in prompts:
            p = p.strip()
            if p in lookup:
                ids.append(lookup[p])
            elif p.isdigit() and int(p) < n:
                ids.append(int(p))
            else:
                raise UserError(f"class {p!r} is not one of this model's {n} classes (give a name from its list or an id 0..{n - 1})")
        return torch.tensor(ids, dtype=torch.int64, device=device)

    return encode_prompts


def load_class_conditional(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    sched_cfg = _scheduler_config(folder)
    has_vae = (folder / "vae").is_dir()
    with quiet_loading():
        try:
            if (folder / "transformer").is_dir():
                from diffusers import DiTTransformer2DModel

                net_dir = _need(folder, "transformer", "the DiT denoiser")
                net = DiTTransformer2DModel.from_pretrained(net_dir, **DIFFUSERS_KW, torch_dtype=dtype)
                n_classes, family = int(net.config.num_embeds_ada_norm), "dit"
                latent_ch, latent_hw = int(net.config.in_channels), int(net.config.sample_size)
            else:
                from diffusers import UNet2DModel

                net_dir = _need(folder, "unet", "the denoiser")
                net = UNet2DModel.from_pretrained(net_dir, **DIFFUSERS_KW, torch_dtype=dtype)
                if not net.config.num_class_embeds:
                    raise UserError(f"{net_dir}: a UNet2DModel without class embeddings (num_class_embeds) cannot classify")
                n_classes, family = int(net.config.num_class_embeds), "class-unet"
                latent_ch, latent_hw = int(net.config.in_channels), int(net.config.sample_size)
            vae = None
            if has_vae:
                from diffusers import AutoencoderKL

                vae = AutoencoderKL.from_pretrained(_need(folder, "vae", "the autoencoder"), **DIFFUSERS_KW, torch_dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"{folder}: cannot load model ({str(e).splitlines()[0]})") from None
    net.to(device).eval().requires_grad_(False)
    if vae is not None:
        vae.to(device).eval().requires_grad_(False)
        resolution = latent_hw * 2 ** (len(vae.config.block_out_channels) - 1)
        channels = int(vae.config.in_channels)
    else:
        resolution, channels = latent_hw, latent_ch
    names = class_names_of(folder, n_classes)
    acp = alphas_cumprod_from_config(sched_cfg)
    pred_type = sched_cfg.get("prediction_type", "epsilon")

    encode_images = make_image_encoder(vae, resolution, channels, device, dtype)

    comps = [net_dir, folder / "scheduler"] + ([folder / "vae"] if has_vae else [])
    fp = fingerprint_paths(*comps)
    return ModelBundle(
        name=name,
        cond_kind="class",
        latent_shape=(latent_ch, latent_hw, latent_hw),
        image_resolution=resolution,
        image_channels=channels,
        alphas_cumprod=acp,
        prediction_type=pred_type,
        device=device,
        dtype=dtype,
        fingerprint=fp,
        text_fingerprint=fp,
        encode_images=encode_images,
        encode_prompts=make_class_encoder(names, device),
        denoise=make_unet_denoiser(raw_network_call(net, class_cond=True), acp, pred_type, device),
        network=net,
        cond_shape=(),
        family=family,
        class_names=names,
        prompt_template="{}",
        path=str(folder),
    )
