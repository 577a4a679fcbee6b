"""``load_model``: which loader serves a model, decided from its name or its folder's layout.

* ``preset:NAME``: an architecture with random weights, for timing (presets).
* a bundled name (``digits``, ``numbers``, ``numbers3``, ``fashion``): that folder inside the package (bundled).
* a folder with ``transformer/`` (DiT), or a ``unet/`` that is a ``UNet2DModel``: class-conditional.
* a folder with ``unet/`` and ``text_encoder/``: text-to-image, Stable Diffusion layout.
* SDXL (a ``text_time`` unet, or ``text_encoder_2/``), and ``transformer/`` folders of SD3, PixArt or Flux:
  their own loaders (sdxl, sd3, pixart, flux).

Each family's loader checks the rest of its folder itself; this module only picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from .bundle import ModelBundle
from .bundled import BUNDLED
from .class_conditional import load_class_conditional
from .common import resolve_device, resolve_dtype
from .locate import PRESET_PREFIX, family, model_folder
from .presets import load_preset
from .text_to_image import load_text_to_image

_FAMILY_MODULES = {"sdxl": "sdxl", "sd3": "sd3", "pixart": "pixart", "flux": "flux"}


def load_model(
    name_or_path: str | Path = "digits",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    implementation: str = "auto",
) -> ModelBundle:
    """Load a model bundle by bundled name (``digits``), preset (``preset:NAME``) or local folder path.

    ``implementation``: "auto" runs a text-to-image folder on the native plain-torch modules when they cover
    every key of its configs (the bundled models do), else on diffusers and transformers; "diffusers" always on
    the libraries (what export traces). Other families always use the libraries.
    """
    if implementation not in ("auto", "diffusers"):
        raise UserError(f"implementation {implementation!r}: expected 'auto' or 'diffusers'")
    # the device and dtype first: a bad one is reported before any folder is looked at
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = str(name_or_path)
    if name.startswith(PRESET_PREFIX):
        return load_preset(name.removeprefix(PRESET_PREFIX), device=dev, dtype=dt)
    folder = model_folder(name)
    load = detect_family(folder)
    kw = {"implementation": implementation} if load is load_text_to_image else {}
    return load(folder, name=name if name in BUNDLED else folder.resolve().name, device=dev, dtype=dt, **kw)


def detect_family(folder: Path) -> Callable[..., ModelBundle]:
    """The loader for ``folder``, from which components it has."""
    fam = family(folder)
    if fam in _FAMILY_MODULES:  # imported on demand: each pulls in its diffusers classes
        import importlib

        return getattr(importlib.import_module(f".{fam}", __package__), f"load_{fam}")
    return {"class_conditional": load_class_conditional, "text_to_image": load_text_to_image}[fam]
