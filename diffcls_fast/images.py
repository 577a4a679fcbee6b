"""Image loading and preprocessing shared by the CLI, the data sets and the tests.

One function turns a PIL image into the model's input tensor, so that training,
``classify`` on a PNG and ``eval`` on the bundled split see identical pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """A model resolution as (height, width): an int means a square."""
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = (int(v) for v in resolution)
    return h, w


def preprocess(img: Image.Image, resolution: int | Sequence[int], channels: int) -> torch.Tensor:
    """PIL image -> float32 tensor [channels, H, W] in [-1, 1].

    ``resolution`` is an int (square, H = W) or (H, W). Resize with bicubic
    filtering so the image covers H x W at its own aspect ratio, then center crop:
    for a square target that is the Stable Diffusion preprocessing of Li et al.
    (shorter side to the resolution). Grayscale for 1-channel models, RGB for
    3-channel ones.
    """
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"models with {channels} image channels are not supported")
    th, tw = as_hw(resolution)
    img = img.convert(mode)
    w, h = img.size
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - tw) // 2, (nh - th) // 2
    img = img.crop((left, top, left + tw, top + th))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))
