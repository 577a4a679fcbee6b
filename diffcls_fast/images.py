"""Image loading and preprocessing shared by the CLI, the data sets and the tests.

One function turns a PIL image into the model's input tensor, so that training,
``classify`` on a PNG and ``eval`` on the bundled split see identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, turning every failure into a one-line UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected an image file")
    try:
        with Image.open(p) as im:
            im.load()  # decode now: a truncated file fails here, not later in the engine
            return im.copy()
    except UnidentifiedImageError:
        raise UserError(f"{p}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data raises these
        raise UserError(f"{p}: cannot decode image ({e})") from None


def preprocess(img: Image.Image, resolution: int, channels: int) -> torch.Tensor:
    """PIL image -> float32 tensor [channels, resolution, resolution] in [-1, 1].

    Resize the shorter side to ``resolution`` with bicubic filtering, then center
    crop (the Stable Diffusion preprocessing of Li et al.). Grayscale for 1-channel
    models, RGB for 3-channel ones.
    """
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"models with {channels} image channels are not supported")
    img = img.convert(mode)
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))
