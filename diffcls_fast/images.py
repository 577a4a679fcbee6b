"""Image loading and preprocessing shared by the CLI, the data sets and the tests.

One function turns a PIL image into the model's input tensor, so that training,
``classify`` on a PNG and ``eval`` on the bundled split see identical pixels.

What an image means is settled here, where it enters, so that every caller sees
the same pixels a viewer would show:

* EXIF orientation is applied (a phone photo is classified upright).
* Every PIL mode is accepted. 8-bit modes go through PIL's own conversions;
  16-bit grayscale (``I;16``, ``I;16B``, ...) keeps its full depth
  (0..65535 maps to [-1, 1]); ``I`` (32-bit int) and ``F`` (float) carry no
  depth, so their range decides: ``I`` up to 255 is 8-bit, else 16-bit; ``F``
  in [0, 1] as is, up to 255 as 8-bit values.
* Transparency is composited onto a solid background (see :func:`flatten_alpha`).
* A file with more than :func:`pixel_limit` pixels is refused before it is decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DiffclsWarning, NonFiniteInput, UserError

# Modes holding grayscale deeper than 8 bits, taken as 16-bit: PIL decodes 16-bit PNG/TIFF files to
# the I;16 family, and to "I" (32-bit int) in older versions and after some conversions.
_DEEP_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_U16_MAX = 65535.0
# Modes with transparency, converted to RGBA and then composited (La has no direct RGBA conversion).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def pixel_limit() -> int | None:
    """The largest image file, in pixels, that :func:`load_image` decodes: PIL's ``Image.MAX_IMAGE_PIXELS``.

    That is about 89.5 megapixels by default (PIL's decompression-bomb guard).
    Set ``PIL.Image.MAX_IMAGE_PIXELS`` to change it; ``None`` removes the limit.
    """
    return Image.MAX_IMAGE_PIXELS


def _check_pixel_limit(p: Path, size: tuple[int, int]) -> None:
    limit = pixel_limit()
    w, h = size
    if limit is not None and w * h > limit:
        raise UserError(
            f"{p}: image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS);"
            " downscale it first"
        )


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, upright (EXIF orientation applied).

    Every failure is a one-line UserError: a missing file, a directory, an
    unreadable or truncated file, a file over :func:`pixel_limit` pixels.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected an image file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; the size is checked below, before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                _check_pixel_limit(p, im.size)
                im.load()  # decode now: a truncated file fails here, not later in the engine
                note = frames_note(str(p), im)
                if note:
                    warnings.warn(note, DiffclsWarning, stacklevel=2)
                return ImageOps.exif_transpose(im)  # a decoded copy, upright
    except Image.DecompressionBombError:  # PIL refuses over 2x its limit while opening
        raise UserError(
            f"{p}: image has more than twice the limit of {pixel_limit():,} pixels (PIL.Image.MAX_IMAGE_PIXELS);"
            " downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise UserError(f"{p}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data raises these
        raise UserError(f"{p}: cannot decode image ({e})") from None


def frames_note(name: str, im: Image.Image) -> str | None:
    """The notice for a file with several frames (an animated GIF/WebP/PNG, a multi-page TIFF), of which only
    the first is classified; None for a still image."""
    frames = int(getattr(im, "n_frames", 1) or 1)
    return f"{name}: has {frames} frames (animated or multi-page); only the first is classified" if frames > 1 else None


def check_image_file(path: str | Path) -> None:
    """Everything about an image file that can fail, without a model: :func:`load_image`
    (the file) and :func:`to_standard_mode` (its mode and pixel range), so that a command can
    refuse a file before the model loads rather than fail that image after.

    RGB is checked: every mode that converts to RGB converts to L too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffclsWarning)  # a multi-frame file is said once, when it is classified
        img = load_image(path)
    if img.mode in ("1", "L", "P", "RGB", "RGBA", "LA"):
        return  # these always convert (no range to check): skip the work for the common case
    try:
        to_standard_mode(img, 3)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """A model resolution as (height, width): an int means a square."""
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = (int(v) for v in resolution)
    return h, w


def flatten_alpha(img: Image.Image) -> Image.Image:
    """An image with transparency -> RGB, composited over black or white.

    The background is the one that contrasts with what is drawn: black when the
    visible content is light (its alpha-weighted mean luma is at least mid-grey),
    white when it is dark. A white glyph whose shape lives in the alpha channel
    (white ink on transparent) thus becomes white on black, and black ink on
    transparent becomes black on white: what the image's author meant it to be
    seen on. A fully opaque image keeps its pixels exactly; a fully transparent
    one is white.
    """
    if img.mode == "La":
        img = img.convert("LA")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    rgb, alpha = rgba[..., :3], rgba[..., 3] / 255.0
    if (alpha == 1.0).all():
        return img.convert("RGB")
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L"
    weight = float(alpha.sum())
    content_luma = float((luma * alpha).sum()) / weight if weight > 0 else 0.0
    background = 0.0 if content_luma >= 127.5 else 255.0
    out = rgb * alpha[..., None] + background * (1.0 - alpha[..., None])
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def _deep_gray_unit(img: Image.Image) -> Image.Image:
    """A 16-bit ("I;16*", "I") or float ("F") grayscale image -> mode "F" holding [0, 1].

    Float images carry no bit depth, so their range decides: [0, 1] is taken as is, and
    anything above 1 up to 255 is read as 8-bit values (what ``convert("F")`` of an 8-bit
    image and many float TIFFs hold); other ranges are refused rather than guessed at.
    """
    arr = np.asarray(img).astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:  # NaN/inf make min and max meaningless ("spans [nan, nan]"): say what is wrong instead
        raise UserError(
            f"a mode {img.mode} image holds {bad} non-finite pixel value{'s' if bad > 1 else ''} (NaN or inf) of"
            f" {arr.size}; pixels must be finite numbers"
        )
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F":
        if lo < 0.0 or hi > 255.0:
            raise UserError(
                f"a float (mode F) image must hold values in [0, 1] or [0, 255]; this one spans [{lo:g}, {hi:g}]"
            )
        unit = arr if hi <= 1.0 else arr / 255.0
    elif img.mode == "I":
        # 32-bit int: PIL gives it for convert("I") of an 8-bit image, Image.fromarray of int32 data and
        # 32-bit TIFFs, as well as for 16-bit files in old versions (new ones give I;16). The range decides,
        # as for F: values up to 255 are 8-bit (a 16-bit image that dark is rare; its pixels would all be
        # under 0.4% of full scale), up to 65535 16-bit; other ranges are refused.
        if lo < 0 or hi > _U16_MAX:
            raise UserError(
                f"a mode I image must hold values in [0, 255] (8-bit) or [0, 65535] (16-bit); this one spans [{lo:g},"
                f" {hi:g}]"
            )
        unit = arr / (255.0 if hi <= 255.0 else _U16_MAX)
    else:
        if lo < 0 or hi > _U16_MAX:
            raise UserError(
                f"a mode {img.mode} image is read as 16-bit grayscale (0..65535); this one spans [{lo:g}, {hi:g}]"
            )
        unit = arr / _U16_MAX
    return Image.fromarray(unit.astype(np.float32), "F")


def to_standard_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL image -> "L" (channels 1) or "RGB" (channels 3), or "F" in [0, 1] for deep grayscale.

    8-bit data keeps PIL's conversions (so "L" and "RGB" inputs are untouched);
    transparency is flattened by :func:`flatten_alpha`; deeper grayscale keeps
    its bit depth as a float image (replicated to RGB after resizing).
    """
    target = {1: "L", 3: "RGB"}.get(channels)
    if target is None:
        raise UserError(f"models with {channels} image channels are not supported")
    if img.mode in _DEEP_GRAY or img.mode == "F":
        return _deep_gray_unit(img)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        img = flatten_alpha(img)
    try:
        if img.mode not in ("1", "L", "P", "RGB"):
            img = img.convert("RGB")  # colour spaces (CMYK, YCbCr, LAB, HSV, ...): PIL converts some only to RGB
        return img.convert(target)
    except ValueError:  # a mode PIL cannot convert
        raise UserError(f"images of mode {img.mode} are not supported; convert it to RGB or L first") from None


def _cover_and_crop(img: Image.Image, th: int, tw: int) -> Image.Image:
    """Resize (bicubic) to cover th x tw at the image's own aspect ratio, then center crop."""
    w, h = img.size
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th))


def preprocess(img: Image.Image, resolution: int | Sequence[int], channels: int) -> torch.Tensor:
    """PIL image (any mode) -> float32 tensor [channels, H, W] in [-1, 1].

    ``resolution`` is an int (square, H = W) or (H, W). The image is turned
    upright (EXIF), brought to grayscale for 1-channel models or RGB for
    3-channel ones (:func:`to_standard_mode`), resized with bicubic filtering so
    it covers H x W at its own aspect ratio, then center cropped: for a square
    target that is the Stable Diffusion preprocessing of Li et al. (shorter side
    to the resolution).
    """
    th, tw = as_hw(resolution)
    if min(img.size) < 1:  # PIL allows 0-pixel images; there is nothing to classify
        raise UserError(f"image has no pixels ({img.size[0]}x{img.size[1]})")
    img = to_standard_mode(ImageOps.exif_transpose(img), channels)
    img = _cover_and_crop(img, th, tw)
    if img.mode == "F":
        # Bicubic filtering overshoots; 8-bit resizing clips to the range, so clip here as well.
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 2.0 - 1.0
        arr = np.repeat(arr[None], channels, axis=0)
    else:
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


# Float tensors may overshoot [-1, 1] by this much (rounding in a user's own preprocessing); they are clamped.
RANGE_TOLERANCE = 1e-3


def array_to_image(arr: np.ndarray, name: str = "image") -> Image.Image:
    """An integer or boolean numpy image -> a PIL image, read like an image file.

    uint8 is 0..255 (HW, HWC or CHW with 1, 3 or 4 channels; 4 is RGBA),
    uint16 is 16-bit grayscale (HW), bool is black and white.
    """
    if arr.ndim == 3:
        if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.shape[-1] not in (1, 3, 4):
            raise UserError(
                f"{name}: array of shape {list(arr.shape)}; expected HW, HWC or CHW with 1, 3 or 4 channels"
            )
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.dtype == np.uint8):
        raise UserError(f"{name}: {arr.dtype} array of shape {list(arr.shape)}; expected HW (or HWC/CHW for uint8)")
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr))
    if arr.dtype == np.uint16:
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16))  # mode I;16
    if arr.dtype == np.bool_:
        return Image.fromarray(np.ascontiguousarray(arr))
    raise UserError(
        f"{name}: array of dtype {arr.dtype}; pass uint8 (0..255), uint16 (0..65535), bool, or floats in [-1, 1]"
    )


def check_pixel_tensor(
    x: torch.Tensor, resolution: int | Sequence[int], channels: int, name: str = "image"
) -> torch.Tensor:
    """A preprocessed image tensor -> float32 [C, H, W] in [-1, 1] on the CPU, or a UserError.

    The shape must be the model's exactly (tensors are not resized). uint8
    tensors are 0..255 pixels; floating-point tensors must be finite and in
    [-1, 1] (within :data:`RANGE_TOLERANCE`, then clamped): a [0, 1] or 0..255
    float image would be read as the wrong pixels, so it is refused.
    """
    expected = [channels, *as_hw(resolution)]
    if list(x.shape) != expected:
        raise UserError(
            f"{name}: tensor of shape {list(x.shape)}, expected [C, H, W] = {expected} for this model (pass a PIL image"
            " or a path to have it resized)"
        )
    if x.dtype == torch.uint8:
        return x.detach().to("cpu", torch.float32) / 127.5 - 1.0
    if not x.is_floating_point():
        raise UserError(
            f"{name}: tensor of dtype {str(x.dtype).removeprefix('torch.')}; expected uint8 (0..255) or floating point"
            " in [-1, 1]"
        )
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise NonFiniteInput(f"{name}: tensor holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise UserError(
            f"{name}: float tensor values span [{lo:.4g}, {hi:.4g}], expected [-1, 1]; map [0, 1] images with x * 2 -"
            " 1, or pass uint8 0..255"
        )
    return x.clamp(-1.0, 1.0)


def to_pixels(image: object, resolution: int | Sequence[int], channels: int, name: str = "image") -> torch.Tensor:
    """Any accepted image form -> the model's preprocessed pixels, float32 [C, H, W] in [-1, 1].

    Paths and PIL images (any mode) go through :func:`preprocess`; integer numpy
    arrays are images (:func:`array_to_image`); tensors and float numpy arrays
    are preprocessed pixels (:func:`check_pixel_tensor`).
    """
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype.kind == "f":
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        else:
            image = array_to_image(image, name)
    if isinstance(image, torch.Tensor):
        return check_pixel_tensor(image, resolution, channels, name)
    if isinstance(image, Image.Image):
        return preprocess(image, resolution, channels)
    raise UserError(f"{name}: expected a path, a PIL image, a numpy array or a tensor, got {type(image).__name__}")


def image_list(images: object, lazy: bool = False) -> Iterable:
    """The ``images`` argument of the API as single images: one image (a path, PIL image, array or
    tensor) is one image, a 4-D tensor or array ``[N, ...]`` is N images, any other iterable is
    its items. ``lazy``: an iterable is passed through unconsumed (a generator streams); else a list."""
    if images is None:
        raise UserError("images is None; pass an image (path, PIL image, array or tensor) or an iterable of them")
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images) if images.ndim == 4 else [images]  # [N, C, H, W] (or N HWC arrays) is N images
    if isinstance(images, (bytes, bytearray)):
        raise UserError("images: got bytes; pass a path or a PIL image (PIL.Image.open(io.BytesIO(data)))")
    if not isinstance(images, Iterable):
        raise UserError(
            "images: expected an image (path, PIL image, array or tensor) or an iterable of them, "
            f"got {type(images).__name__}"
        )
    return images if lazy else list(images)
