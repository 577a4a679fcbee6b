"""Where a ``--model`` argument points, and which family its folder has: checks that need no torch.

``serve`` runs these before it binds its port, so a bad ``--model`` is one line and a non-zero exit at once,
as with every other command; ``load_model`` runs the same checks, so the wording is the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .bundled import BUNDLED

PRESET_PREFIX = "preset:"


def component_config(folder: Path, sub: str) -> dict:
    """``folder/sub/config.json``, or {} when it is missing or unreadable: for telling layouts apart,
    where a broken config is reported later by the loader that reads it."""
    cfg = folder / sub / "config.json"
    try:
        d = json.loads(cfg.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def model_folder(name: str) -> Path:
    """The folder a bundled name or a path names, refused unless it is an existing folder."""
    known = ", ".join(sorted(BUNDLED))
    if not name.strip():
        # Path("") is the current directory: an empty --model (an unset shell variable) must not load "."
        raise UserError(f"--model is empty; give a bundled model ({known}), preset:NAME or a model folder")
    folder = BUNDLED.get(name, Path(name).expanduser())
    if name in BUNDLED and not folder.is_dir():  # a bundled model whose folder is not trained (or exported) yet
        how = f"python scripts/train_bundled.py --model {name} (see its docstring)"
        raise UserError(f"the {name} model is not trained yet: run {how}")
    if not folder.exists():
        raise UserError(f"model {name!r}: no such folder (bundled models: {known}; presets: preset:NAME)")
    if not folder.is_dir():
        raise UserError(f"model {name!r}: not a folder")
    return folder


# transformer/ classes of the text-to-image transformer families (any other transformer/ is taken for a DiT)
TRANSFORMER_FAMILIES = {
    "SD3Transformer2DModel": "sd3",
    "PixArtTransformer2DModel": "pixart",
    "FluxTransformer2DModel": "flux",
}


def family(folder: Path) -> str:
    """``"class_conditional"``, ``"text_to_image"`` (Stable Diffusion 1.x/2.x), ``"sdxl"``, ``"sd3"``,
    ``"pixart"`` or ``"flux"``, from which components ``folder`` has and what its denoiser's config names."""
    if (folder / "transformer").is_dir():
        cls = component_config(folder, "transformer").get("_class_name", "")
        return TRANSFORMER_FAMILIES.get(cls, "class_conditional")
    unet_cfg = component_config(folder, "unet") if (folder / "unet").is_dir() else {}
    if unet_cfg.get("addition_embed_type") == "text_time" or (
        (folder / "unet").is_dir() and (folder / "text_encoder_2").is_dir()
    ):
        return "sdxl"
    if (folder / "unet").is_dir() and component_config(folder, "unet").get("_class_name", "") == "UNet2DModel":
        return "class_conditional"
    if (folder / "unet").is_dir() and (folder / "text_encoder").is_dir():
        return "text_to_image"
    if (folder / "unet").is_dir():
        missing = ", ".join(s + "/" for s in ("text_encoder", "tokenizer") if not (folder / s).is_dir())
        needs = "a text-to-image folder needs unet/, scheduler/, text_encoder/ and tokenizer/"
        raise UserError(f"{folder}: missing {missing} ({needs})")
    layouts = "expected unet/, scheduler/, text_encoder/, tokenizer/ and optionally vae/, or transformer/ for DiT"
    raise UserError(f"{folder}: missing unet/ (not a diffusion model folder; {layouts})")


def check_model_arg(name: str) -> None:
    """Everything about ``--model`` that can be told without torch: an empty name, a missing folder, a folder
    that is no diffusion model. A preset's name is checked by its loader."""
    if name.startswith(PRESET_PREFIX):
        return
    family(model_folder(name))
