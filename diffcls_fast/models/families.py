"""Which loader serves a folder, decided from its layout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError


def _config(folder: Path, sub: str) -> dict:
    cfg = folder / sub / "config.json"
    try:
        d = json.loads(cfg.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _unet_class(folder: Path) -> str:
    return _config(folder, "unet").get("_class_name", "")


def _check_dit(folder: Path) -> None:
    """transformer/ is a DiT only if its config says so: an SD3/Flux/PixArt transformer loaded as
    a DiT would run with half its weights missing."""
    cfg = _config(folder, "transformer")
    cls = cfg.get("_class_name", "")
    if cls == "DiTTransformer2DModel" or (cls == "Transformer2DModel" and cfg.get("norm_type") == "ada_norm_zero" and cfg.get("num_embeds_ada_norm")):
        return
    what = f"{cls} (norm_type {cfg.get('norm_type')!r})" if cls == "Transformer2DModel" else (cls or "an unreadable config")
    raise UserError(f"{folder}/transformer: {what} is not a class-conditional DiT; transformer/ folders are supported for DiT only")


def detect_family(folder: Path) -> Callable:
    from . import loader

    if (folder / "transformer").is_dir():
        from .class_conditional import load_class_conditional

        _check_dit(folder)
        return load_class_conditional
    if (folder / "unet").is_dir() and _unet_class(folder) == "UNet2DModel":
        from .class_conditional import load_class_conditional

        return load_class_conditional
    if (folder / "unet").is_dir() and (folder / "text_encoder").is_dir():
        return loader.load_text_to_image
    if (folder / "unet").is_dir():
        missing = [s for s in ("text_encoder", "tokenizer") if not (folder / s).is_dir()]
        raise UserError(f"{folder}: missing {', '.join(s + '/' for s in missing)} (a text-to-image folder needs unet/, scheduler/, text_encoder/ and tokenizer/)")
    raise UserError(f"{folder}: missing unet/ (not a diffusion model folder; expected unet/, scheduler/, text_encoder/, tokenizer/ and optionally vae/, or transformer/ for DiT)")
