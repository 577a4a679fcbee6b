"""Image files and in-memory images become the pixels a viewer would show, in every mode."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffcls_fast.data.digits import load_split
from diffcls_fast.errors import UserError
from diffcls_fast.images import check_pixel_tensor, flatten_alpha, load_image, preprocess, to_pixels

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW_TO_VIEW = 6  # EXIF Orientation 6: the stored pixels must be turned 90 degrees clockwise to view


@pytest.fixture(scope="module")
def digit() -> Image.Image:
    """A held-out digit: 8x8, mode L, white ink on black."""
    pil, _, _ = load_split("heldout")
    return pil[3]


def px(img: Image.Image, channels: int = 1) -> torch.Tensor:
    return preprocess(img, 8, channels)


def deep_image(values: np.ndarray, mode: str) -> Image.Image:
    """A 16-bit grayscale image of one of PIL's 16-bit layouts (PIL's own convert() clips to 8 bits)."""
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    return Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes())


def _save_with_orientation(img: Image.Image, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, exif=exif)


# -- files -----------------------------------------------------------------------------
def test_exif_orientation_is_applied(digit, tmp_path):
    stored = digit.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    path = tmp_path / "sideways.png"
    _save_with_orientation(stored, path, ROTATE_90_CW_TO_VIEW)
    loaded = load_image(path)
    assert not torch.equal(px(stored), px(digit))  # the test would notice an ignored tag
    assert torch.equal(px(loaded), px(digit))
    # A PIL image opened by the caller (tag still attached) is turned upright too.
    with Image.open(path) as im:
        assert torch.equal(px(im), px(digit))


def test_16_bit_png_keeps_its_depth(digit, tmp_path):
    deep = np.asarray(digit).astype(np.uint16) * 257  # 0..255 -> 0..65535
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    loaded = load_image(path)
    assert loaded.mode.startswith("I")
    torch.testing.assert_close(px(loaded), px(digit), rtol=0, atol=1e-6)
    torch.testing.assert_close(px(loaded, 3), px(digit, 3), rtol=0, atol=1e-6)


def test_16_bit_values_between_8_bit_levels_are_not_clipped():
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    out = px(Image.fromarray(ramp))[0].numpy()
    np.testing.assert_allclose(out, ramp / 65535.0 * 2 - 1, atol=1e-6)
    assert len(np.unique(out)) == 64  # clipping to 0..255 would leave {-1, ~-1, 1}


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I"])
def test_other_16_bit_layouts_read_the_same(mode):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    img = deep_image(ramp, mode)
    assert img.mode == mode
    torch.testing.assert_close(px(img), px(Image.fromarray(ramp)), rtol=0, atol=1e-6)


def test_mode_I_with_8_bit_values_reads_as_8_bit(digit):
    # Regression: convert("I") of an 8-bit image (or int32 data in 0..255) was read as 16-bit: nearly black.
    for img in (digit.convert("I"), Image.fromarray(np.asarray(digit).astype(np.int32))):
        assert img.mode == "I"
        torch.testing.assert_close(px(img), px(digit), rtol=0, atol=1e-6)
        torch.testing.assert_close(px(img, 3), px(digit, 3), rtol=0, atol=1e-6)


def test_mode_I_outside_16_bits_and_F_outside_known_ranges_are_user_errors():
    with pytest.raises(UserError, match="16-bit"):
        px(Image.fromarray(np.full((8, 8), 70000, np.int32), "I"))
    for bad in (300.0, -0.5):
        with pytest.raises(UserError, match=r"\[0, 1\] or \[0, 255\]"):
            px(Image.fromarray(np.full((8, 8), bad, np.float32), "F"))


def test_a_non_finite_pixel_is_named_not_reported_as_a_nan_range(tmp_path):
    arr = np.full((8, 8), 0.5, np.float32)
    arr[2, 3] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    with pytest.raises(UserError) as e:
        px(load_image(tmp_path / "f.tif"))
    assert "1 non-finite pixel value (NaN or inf) of 64" in str(e.value) and "nan, nan" not in str(e.value)


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_a_multi_frame_file_is_classified_on_its_first_frame_with_one_warning(digit, tmp_path, suffix):
    from diffcls_fast.errors import DiffclsWarning
    from diffcls_fast.images import check_image_file

    frames = [digit, digit.transpose(Image.Transpose.FLIP_LEFT_RIGHT), digit.rotate(90)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image_file(path)  # the check before the model loads is silent: the file is said once, below
    with pytest.warns(DiffclsWarning, match=r"has 3 frames \(animated or multi-page\); only the first is classified"):
        img = load_image(path)
    torch.testing.assert_close(px(img), px(digit))


def test_float_image_in_unit_range_or_8_bit_range(digit):
    unit = np.asarray(digit, np.float32) / 255.0
    torch.testing.assert_close(px(Image.fromarray(unit, "F")), px(digit), rtol=0, atol=1e-6)
    torch.testing.assert_close(px(digit.convert("F")), px(digit), rtol=0, atol=1e-6)  # 0..255 floats


def test_ink_in_the_alpha_channel_is_composited_over_the_contrasting_background(digit):
    ink = np.asarray(digit)
    white_ink = np.dstack([np.full_like(ink, 255)] * 3 + [ink])
    black_ink = np.dstack([np.zeros_like(ink)] * 3 + [ink])
    assert torch.equal(px(Image.fromarray(white_ink, "RGBA")), px(digit))  # white on black: the digit itself
    assert torch.equal(px(Image.fromarray(black_ink, "RGBA")), px(Image.fromarray(255 - ink, "L")))  # black on white
    la = Image.fromarray(np.dstack([np.full_like(ink, 255), ink]), "LA")
    assert torch.equal(px(la), px(digit))
    assert torch.equal(px(la.convert("La")), px(digit))
    assert torch.equal(px(la, 3), px(digit, 3))


def test_opaque_alpha_changes_nothing(digit):
    rgb = digit.convert("RGB")
    assert torch.equal(px(rgb.convert("RGBA"), 3), px(rgb, 3))
    assert np.array_equal(np.asarray(flatten_alpha(rgb.convert("RGBA"))), np.asarray(rgb))


def test_palette_transparency_is_composited(digit):
    pal = Image.fromarray(np.where(np.asarray(digit) > 127, 1, 0).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.info["transparency"] = 1  # the white ink is transparent: black ink on transparent
    out = px(pal)
    assert out.min() == -1 and out.max() == 1  # composited over white: black ink visible, background white
    assert torch.equal(out == -1, torch.from_numpy(np.asarray(digit) <= 127)[None])


def test_mode_1_is_black_and_white(digit):
    bw = digit.convert("1")
    out = px(bw)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(out, px(bw.convert("L")))


@pytest.mark.parametrize(
    "mode",
    [
        "1",
        "L",
        "P",
        "PA",
        "LA",
        "La",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "I;16",
        "I;16B",
        "F",
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_gives_model_pixels(digit, mode, channels):
    if mode == "F":
        img = Image.fromarray(np.asarray(digit).astype(np.float32) / 255.0)
    elif mode in ("I", "I;16", "I;16B"):
        img = deep_image(np.asarray(digit).astype(np.uint16) * 257, mode)
    else:
        img = digit.convert({"PA": "RGBA", "RGBa": "RGBA", "La": "LA"}.get(mode, "L")).convert(mode)
    assert img.mode == mode
    out = preprocess(img, (8, 6), channels)
    assert out.shape == (channels, 8, 6) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_too_many_pixels_is_one_user_error_naming_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (10, 10)).save(tmp_path / "ok.png")
    Image.new("L", (12, 12)).save(tmp_path / "over.png")  # PIL only warns here
    Image.new("L", (20, 20)).save(tmp_path / "far-over.png")  # PIL refuses here
    load_image(tmp_path / "ok.png")
    for name in ("over.png", "far-over.png"):
        with pytest.raises(UserError, match=r"limit of 100 ") as e:
            load_image(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


# -- arrays and tensors ----------------------------------------------------------------------
def test_uint8_arrays_are_images(digit):
    gray = np.asarray(digit)
    assert torch.equal(to_pixels(gray, 8, 1), px(digit))
    rgb = np.asarray(digit.convert("RGB"))
    assert torch.equal(to_pixels(rgb, 8, 3), px(digit, 3))  # HWC
    assert torch.equal(to_pixels(rgb.transpose(2, 0, 1), 8, 3), px(digit, 3))  # CHW
    assert torch.equal(to_pixels(gray[None], 8, 1), px(digit))  # 1HW
    big = np.asarray(digit.resize((32, 32), Image.NEAREST))
    assert to_pixels(big, 8, 1).shape == (1, 8, 8)  # arrays read as images are resized like images


def test_uint16_and_bool_arrays(digit):
    deep = np.asarray(digit).astype(np.uint16) * 257
    torch.testing.assert_close(to_pixels(deep, 8, 1), px(digit), rtol=0, atol=1e-6)
    mask = np.asarray(digit) > 127
    assert torch.equal(to_pixels(mask, 8, 1), torch.from_numpy(np.where(mask, 1.0, -1.0).astype(np.float32))[None])


def test_float_arrays_are_preprocessed_pixels(digit):
    pixels = px(digit)
    assert torch.equal(to_pixels(pixels.numpy().astype(np.float64), 8, 1), pixels)
    with pytest.raises(UserError, match=r"x \* 2 - 1"):
        to_pixels((pixels.numpy() + 1) * 127.5, 8, 1)


def test_other_integer_arrays_and_objects_are_user_errors():
    with pytest.raises(UserError, match="int64"):
        to_pixels(np.zeros((8, 8), np.int64), 8, 1, name="images[2]")
    with pytest.raises(UserError, match=r"images\[2\].*HW"):
        to_pixels(np.zeros((8, 8, 5), np.uint8), 8, 1, name="images[2]")
    with pytest.raises(UserError, match=r"images\[2\].*int"):
        to_pixels(3, 8, 1, name="images[2]")


def test_uint8_tensors_are_0_to_255_pixels(digit):
    t = torch.from_numpy(np.asarray(digit).copy())[None]
    assert torch.equal(check_pixel_tensor(t, 8, 1), px(digit))


@pytest.mark.parametrize(
    "tensor, match",
    [
        (torch.zeros(3, 8, 8), r"\[3, 8, 8\], expected \[C, H, W\] = \[1, 8, 8\]"),
        (torch.zeros(1, 16, 16), r"expected \[C, H, W\] = \[1, 8, 8\]"),
        (torch.zeros(8, 8), r"expected \[C, H, W\] = \[1, 8, 8\]"),
        (torch.zeros(2, 1, 8, 8), r"expected \[C, H, W\] = \[1, 8, 8\]"),
        (torch.full((1, 8, 8), 255.0), r"span \[255, 255\], expected \[-1, 1\].*x \* 2 - 1"),
        (torch.full((1, 8, 8), -3.0), r"span \[-3, -3\]"),
        (torch.full((1, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 8, 8, dtype=torch.int64), "int64"),
    ],
)
def test_malformed_tensors_are_user_errors(tensor, match):
    with pytest.raises(UserError, match=match):
        check_pixel_tensor(tensor, 8, 1, name="images[0]")


def test_float_tensors_within_rounding_of_the_range_are_clamped_not_refused():
    t = torch.linspace(-1.0005, 1.0005, 64).reshape(1, 8, 8)
    out = check_pixel_tensor(t, 8, 1)
    assert out.min() == -1 and out.max() == 1
    assert t.min() < -1  # the caller's tensor is not modified
