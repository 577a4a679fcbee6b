"""Which loader serves a folder, decided from its layout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError


def _unet_class(folder: Path) -> str:
    cfg = folder / "unet" / "config.json"
    try:
        return json.loads(cfg.read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError):
        return ""


def detect_family(folder: Path) -> Callable:
    from . import loader

    if (folder / "transformer").is_dir():
        from .class_conditional import load_class_conditional

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
