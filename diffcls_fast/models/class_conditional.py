"""Class-conditional models: diffusers DiT (``transformer/``) and ``UNet2DModel`` with class embeddings.

The condition is a class id. Class names come from ``classes.txt`` in the
folder (one per line), or the DiT pipeline's ``id2label`` in
``model_index.json``; otherwise the names are the ids themselves ("0", "1", ...).
A prompt for such a model is a class name or an id.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..images import as_hw
from .bundle import ModelBundle
from .common import (
    alphas_cumprod_from_config,
    check_pixel_channels,
    check_vae_folder,
    load_weights,
    make_class_encoder,
    make_image_encoder,
    make_unet_denoiser,
    need_component,
    parse_resolution,
    quiet_loading,
    raw_network_call,
    read_json,
    scheduler_config,
    vae_dtype,
    vae_resolution,
)
from .fingerprint import fingerprint_paths
from .locate import component_config


def check_dit(folder: Path) -> None:
    """transformer/ is a DiT only if its config says so: an SD3/Flux/PixArt transformer loaded as
    a DiT would run with half its weights missing."""
    cfg = component_config(folder, "transformer")
    cls = cfg.get("_class_name", "")
    if cls == "DiTTransformer2DModel":
        return
    if cls == "Transformer2DModel" and cfg.get("norm_type") == "ada_norm_zero" and cfg.get("num_embeds_ada_norm"):
        return
    if cls == "Transformer2DModel":
        what = f"{cls} (norm_type {cfg.get('norm_type')!r})"
    else:
        what = cls or "an unreadable config"
    only = "transformer/ folders are supported for DiT only"
    raise UserError(f"{folder}/transformer: {what} is not a class-conditional DiT; {only}")


def class_names_of(folder: Path, n_classes: int) -> list[str]:
    txt = folder / "classes.txt"
    if txt.is_file():
        try:
            text = txt.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{txt}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8, one class name per line"
            ) from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if len(names) != n_classes:
            raise UserError(f"{txt}: {len(names)} names for a model with {n_classes} classes")
        return names
    idx = folder / "model_index.json"
    if idx.is_file():
        id2label = read_json(idx).get("id2label")
        if isinstance(id2label, dict) and len(id2label) == n_classes:
            if set(id2label) != {str(i) for i in range(n_classes)}:
                raise UserError(f'{idx}: id2label\'s keys must be the class ids "0" .. "{n_classes - 1}"')
            # DiT's labels may hold synonyms ("tench, Tinca tinca"): keep the first.
            return [str(id2label[str(i)]).split(",")[0].strip() for i in range(n_classes)]
    return [str(i) for i in range(n_classes)]


def load_class_conditional(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    if (folder / "transformer").is_dir():
        check_dit(folder)
    sched_cfg = scheduler_config(folder)
    has_vae = check_vae_folder(folder)
    kw = {"low_cpu_mem_usage": False, "torch_dtype": dtype}
    with quiet_loading():
        if (folder / "transformer").is_dir():
            from diffusers import DiTTransformer2DModel

            net_dir = need_component(folder, "transformer", "the DiT denoiser")
            net = load_weights(DiTTransformer2DModel, net_dir, "the DiT denoiser", **kw)
            n_classes, family = int(net.config.num_embeds_ada_norm), "dit"
        else:
            from diffusers import UNet2DModel

            net_dir = need_component(folder, "unet", "the denoiser")
            net = load_weights(UNet2DModel, net_dir, "the denoiser", **kw)
            if not net.config.num_class_embeds:
                raise UserError(f"{net_dir}: a UNet2DModel without class embeddings (num_class_embeds) cannot classify")
            n_classes, family = int(net.config.num_class_embeds), "class-unet"
        latent_ch = int(net.config.in_channels)
        latent_hw = as_hw(parse_resolution(net.config.sample_size))
        vae = None
        if has_vae:
            from diffusers import AutoencoderKL

            vae_dir = need_component(folder, "vae", "the autoencoder")
            vae = load_weights(
                AutoencoderKL, vae_dir, "the autoencoder", **{**kw, "torch_dtype": vae_dtype(vae_dir, dtype)}
            )
    net.to(device).eval().requires_grad_(False)
    if vae is not None:
        vae.to(device).eval().requires_grad_(False)
        resolution = vae_resolution(vae, latent_hw)
        channels = int(vae.config.in_channels)
        if int(vae.config.latent_channels) != latent_ch:
            raise UserError(
                f"{folder}: vae has {vae.config.latent_channels} latent channels but the denoiser expects {latent_ch}"
            )
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
