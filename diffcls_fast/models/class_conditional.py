"""Class-conditional models: diffusers DiT (``transformer/``) and ``UNet2DModel`` with class embeddings.

The condition is a class id. Class names come from ``classes.txt`` in the
folder (one per line), or the DiT pipeline's ``id2label`` in
``model_index.json``; otherwise the names are the ids themselves ("0", "1", ...).
A prompt for such a model is a class name or an id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..images import as_hw
from .bundle import ModelBundle
from .fingerprint import fingerprint_paths
from .loader import (
    _need,
    _read_json,
    _resolution,
    _scheduler_config,
    alphas_cumprod_from_config,
    check_pixel_channels,
    check_vae_folder,
    load_weights,
    make_image_encoder,
    make_unet_denoiser,
    quiet_loading,
    raw_network_call,
    vae_dtype,
    vae_resolution,
)


def class_names_of(folder: Path, n_classes: int) -> list[str]:
    txt = folder / "classes.txt"
    if txt.is_file():
        try:
            text = txt.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{txt}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8, one class name per line") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if len(names) != n_classes:
            raise UserError(f"{txt}: {len(names)} names for a model with {n_classes} classes")
        return names
    idx = folder / "model_index.json"
    if idx.is_file():
        id2label = _read_json(idx).get("id2label")
        if isinstance(id2label, dict) and len(id2label) == n_classes:
            if set(id2label) != {str(i) for i in range(n_classes)}:
                raise UserError(f'{idx}: id2label\'s keys must be the class ids "0" .. "{n_classes - 1}"')
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
    has_vae = check_vae_folder(folder)
    kw = {"low_cpu_mem_usage": False, "torch_dtype": dtype}
    with quiet_loading():
        if (folder / "transformer").is_dir():
            from diffusers import DiTTransformer2DModel

            net_dir = _need(folder, "transformer", "the DiT denoiser")
            net = load_weights(DiTTransformer2DModel, net_dir, "the DiT denoiser", **kw)
            n_classes, family = int(net.config.num_embeds_ada_norm), "dit"
        else:
            from diffusers import UNet2DModel

            net_dir = _need(folder, "unet", "the denoiser")
            net = load_weights(UNet2DModel, net_dir, "the denoiser", **kw)
            if not net.config.num_class_embeds:
                raise UserError(f"{net_dir}: a UNet2DModel without class embeddings (num_class_embeds) cannot classify")
            n_classes, family = int(net.config.num_class_embeds), "class-unet"
        latent_ch, latent_hw = int(net.config.in_channels), as_hw(_resolution(net.config.sample_size))
        vae = None
        if has_vae:
            from diffusers import AutoencoderKL

            vae_dir = _need(folder, "vae", "the autoencoder")
            vae = load_weights(AutoencoderKL, vae_dir, "the autoencoder", **{**kw, "torch_dtype": vae_dtype(vae_dir, dtype)})
    net.to(device).eval().requires_grad_(False)
    if vae is not None:
        vae.to(device).eval().requires_grad_(False)
        resolution = vae_resolution(vae, latent_hw)
        channels = int(vae.config.in_channels)
        if int(vae.config.latent_channels) != latent_ch:
            raise UserError(f"{folder}: vae has {vae.config.latent_channels} latent channels but the denoiser expects {latent_ch}")
    else:
        check_pixel_channels(folder, latent_ch)
        resolution, channels = (latent_hw[0] if latent_hw[0] == latent_hw[1] else latent_hw), latent_ch
    names = class_names_of(folder, n_classes)
    acp = alphas_cumprod_from_config(sched_cfg)
    pred_type = sched_cfg.get("prediction_type", "epsilon")

    encode_images = make_image_encoder(vae, resolution, channels, device, dtype)

    comps = [net_dir, folder / "scheduler"] + ([folder / "vae"] if has_vae else [])
    fp = fingerprint_paths(*comps)
    return ModelBundle(
        name=name,
        cond_kind="class",
        latent_shape=(latent_ch, *latent_hw),
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
