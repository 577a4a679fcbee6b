"""Fuzz-style robustness: a corpus of generated bad inputs through the CLI and the Python API.

Every case must end in one of two ways, within a bounded time:

* a user error: exit code 2 and exactly one line on stderr (CLI), or ``UserError``/``ValueError``/
  ``TypeError`` (API) -- never a traceback, an ``AttributeError`` or a raw ``RuntimeError``; or
* a correct result: exit code 0, one row per image, the label is the posterior's top class.

The corpus is built in a temporary folder from a seeded generator, so a failure reproduces.
Valid-but-odd inputs run with a 2-point exhaustive grid to keep CI fast.
"""

from __future__ import annotations

import json
import math
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.cli import main
from diffcls_fast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DIGIT = ROOT / "examples" / "digit-7.png"
FAST = ["--policy", "exhaustive", "--n-grid", "2", "--no-cache"]
CASE_SECONDS = 90  # generous on a loaded 2-core machine; a stall (the old failure mode) never ends


@contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging CI) when a case does not finish: the engine must never stall."""

    def boom(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s (stall?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def cli(capsys):
    def run(*args):
        capsys.readouterr()
        with time_limit(CASE_SECONDS):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:  # argparse exits; its message must still be one line
                rc = e.code
        cap = capsys.readouterr()
        return SimpleNamespace(rc=rc, out=cap.out, err=cap.err.strip())

    return run


def assert_clean(proc, n_images: int | None = None):
    """Exit 2 with one line, or exit 0 with a consistent JSON row per image."""
    assert "Traceback" not in proc.err, proc.err
    if proc.rc == 2:
        lines = proc.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffcls-fast: error: "), proc.err
        return "error"
    assert proc.rc == 0, (proc.rc, proc.err)
    rows = [json.loads(line) for line in proc.out.splitlines() if line.startswith("{")]
    if n_images is not None:
        assert len(rows) == n_images, proc.out
    for row in rows:
        if row.get("error"):
            continue
        top = max(row["top"], key=lambda t: t["p"])
        assert top["class"] == row["label"], row
    return "ok"


# -- the corpus ---------------------------------------------------------------------------------


def png_with_size(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height (pixel data for 1x1): a decompression bomb's shape."""
    raw = b"\x89PNG\r\n\x1a\n"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(raw + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


def bad_image_files(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    good = DIGIT.read_bytes()
    files = {
        "empty": b"",
        "random-bytes": rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "truncated": good[: len(good) // 2],
        "text": b"hello, I am not an image\n",
        "header-only": good[:16],
    }
    out = {}
    for name, data in files.items():
        (d / f"{name}.png").write_bytes(data)
        out[name] = d / f"{name}.png"
    png_with_size(d / "bomb.png", 30000, 30000)
    out["bomb"] = d / "bomb.png"
    (d / "folder.png").mkdir()
    out["directory"] = d / "folder.png"
    out["missing"] = d / "missing.png"
    return out


def odd_image_files(d: Path) -> dict[str, Path]:
    """Valid images of every awkward kind: each must be answered, not refused or crashed on."""
    base = Image.open(DIGIT).convert("L")
    out = {}
    for mode in ("1", "P", "LA", "RGBA", "I", "F", "I;16", "RGB", "CMYK"):
        im = (
            base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base, np.uint16) * 257)
        )  # uint16 -> I;16
        ext = "tiff" if mode in ("I", "F", "CMYK") else "png"
        p = d / f"mode-{mode.replace(';', '_')}.{ext}"
        im.save(p)
        out[f"mode {mode}"] = p
    Image.new("L", (1, 1), 255).save(d / "one-pixel.png")
    out["1x1"] = d / "one-pixel.png"
    Image.new("L", (1, 400), 0).save(d / "sliver.png")
    out["1x400"] = d / "sliver.png"
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    out["animated gif"] = d / "anim.gif"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    base.transpose(Image.Transpose.ROTATE_90).save(d / "exif.jpg", exif=exif, quality=95)
    out["exif jpeg"] = d / "exif.jpg"
    return out


def bad_csvs(d: Path) -> dict[str, Path]:
    texts = {
        "empty": b"",
        "header only": b"classidx,prompt\n",
        "bad index": b"classidx,prompt\nx,a photo\n",
        "missing column": b"classidx\n0\n1\n",
        "negative index": b"classidx,prompt\n-1,a\n0,b\n",
        "gap": b"classidx,prompt\n0,a\n2,b\n",
        "non-utf8": b"classidx,prompt\n0,\xff\xfe\n1,b\n",
        "empty prompt": b"classidx,prompt\n0,\n1,b\n",
        "binary": bytes(range(256)),
    }
    out = {}
    for name, data in texts.items():
        p = d / (name.replace(" ", "-") + ".csv")
        p.write_bytes(data)
        out[name] = p
    return out


def bad_noise_files(d: Path) -> dict[str, Path]:
    out = {}
    (d / "text.safetensors").write_text("not a tensor file")
    out["text"] = d / "text.safetensors"
    save_file({"other": torch.zeros(4, 1, 8, 8)}, d / "no-key.safetensors")
    out["no noise tensor"] = d / "no-key.safetensors"
    save_file({"noise": torch.zeros(4, 8, 8)}, d / "rank3.safetensors")
    out["rank 3"] = d / "rank3.safetensors"
    save_file({"noise": torch.zeros(4, 3, 8, 8)}, d / "channels.safetensors")
    out["wrong channels"] = d / "channels.safetensors"
    save_file({"noise": torch.zeros(4, 1, 8, 8, dtype=torch.int32)}, d / "int.safetensors")
    out["int dtype"] = d / "int.safetensors"
    save_file({"noise": torch.full((4, 1, 8, 8), float("nan"))}, d / "nan.safetensors")
    out["nan"] = d / "nan.safetensors"
    return out


BAD_OPTIONS = [
    ["--batch-size", "0"],
    ["--batch-size", "-8"],
    ["--batch-size", "abc"],
    ["--max-inflight", "0"],
    ["--max-inflight", "-1"],
    ["--seed", "-1"],
    ["--seed", "1.5"],
    ["--n-grid", "0"],
    ["--cutoff-pval", "2"],
    ["--cutoff-pval", "nan"],
    ["--temperature", "0"],
    ["--temperature", "-1"],
    ["--temperature", "nan"],
    ["--device", "bogus"],
    ["--device", "cuda:7"],
    ["--dtype", "fp8"],
    ["--policy", "magic"],
    ["--loss", "l3"],
    ["--classes", ""],
    ["--classes", ",,,"],
    ["--classes", "seven,seven"],
]


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_bad_image_files_are_one_line_errors(cli, tmp_path):
    for name, path in bad_image_files(tmp_path).items():
        proc = cli("classify", path, *FAST)
        assert assert_clean(proc) == "error", (name, proc.out)


@pytest.mark.slow
def test_cli_odd_but_valid_images_are_answered(cli, tmp_path):
    files = odd_image_files(tmp_path)
    proc = cli("classify", *files.values(), "--json", *FAST)
    assert assert_clean(proc, n_images=len(files)) == "ok", proc.err


def test_cli_bad_csvs_are_one_line_errors(cli, tmp_path):
    for name, path in bad_csvs(tmp_path).items():
        proc = cli("classify", DIGIT, "--prompts", path, *FAST)
        assert assert_clean(proc) == "error", (name, proc.out)


def test_cli_bad_noise_files_are_one_line_errors(cli, tmp_path):
    for name, path in bad_noise_files(tmp_path).items():
        proc = cli("classify", DIGIT, "--noise-path", path, *FAST)
        assert assert_clean(proc) == "error", (name, proc.out)


@pytest.mark.parametrize("opts", BAD_OPTIONS, ids=lambda o: " ".join(o))
def test_cli_bad_option_values_are_one_line_errors(cli, opts):
    proc = cli("classify", DIGIT, *FAST, *opts)
    assert assert_clean(proc) == "error", (opts, proc.out)


@pytest.mark.parametrize(
    "args",
    [
        ["--out", "/"],
        ["--out", "/no/such/dir/x.jsonl"],
        ["--limit", "0"],
        ["--limit", "-3"],
        ["--split", "test"],
        ["--data", "/no/such/data"],
        ["--model", "preset:sd15"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli_bad_eval_arguments_are_one_line_errors(cli, args):
    proc = cli("eval", *FAST, *args)
    assert assert_clean(proc) == "error", (args, proc.out)


def test_cli_malformed_out_files_are_one_line_errors(cli, tmp_path):
    for name, data in {
        "list": b"[1, 2]\n",
        "no id": b'{"config": "x"}\n',
        "non-utf8": b"\xff\xfe\n",
        "garbage": b"{{{\n",
    }.items():
        out = tmp_path / f"{name}.jsonl"
        out.write_bytes(data)
        proc = cli("eval", "--limit", "1", "--out", out, *FAST)
        assert assert_clean(proc) == "error", (name, proc.out)


# -- API ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clf():
    return DiffusionClassifier(load_model("digits"), "exhaustive", n_grid=2, use_cache=False)


API_ERRORS = (UserError, ValueError, TypeError)


def api_case(clf, images, classes=None):
    """Classify; return 'ok' (consistent results) or 'error' (a clean exception)."""
    with time_limit(CASE_SECONDS):
        try:
            res = clf.classify(images, classes)
        except API_ERRORS as e:
            assert str(e) and "\n" not in str(e).strip(), repr(e)
            return "error"
    for r in res:
        if getattr(r, "error", None):
            continue
        assert r.label == int(np.argmax(r.probabilities)), r
        assert math.isclose(float(np.sum(r.probabilities)), 1.0, rel_tol=1e-6)
    return "ok"


def test_api_bad_images_raise_clean_errors(clf):
    rng = np.random.default_rng(1)
    bad = {
        "None": None,
        "int": 7,
        "bytes": b"\x89PNG",
        "list with None": [None],
        "rank-2 tensor": torch.zeros(8, 8),
        "rank-5 tensor": torch.zeros(1, 1, 1, 8, 8),
        "3 channels": torch.zeros(3, 8, 8),
        "wrong size": torch.zeros(1, 9, 8),
        "out of range": torch.full((1, 8, 8), 40.0),
        "complex": torch.zeros(1, 8, 8, dtype=torch.complex64),
        "random float64 array": rng.normal(0, 100, (8, 8)),
        "empty array": np.zeros((0, 0), dtype=np.uint8),
    }
    for name, images in bad.items():
        assert api_case(clf, images) == "error", name
    # NaN/inf pixels fail that image (result.error), never the call: the other images are answered.
    for name, x in {
        "nan tensor": torch.full((1, 8, 8), float("nan")),
        "inf array": np.full((1, 8, 8), np.inf, dtype=np.float32),
    }.items():
        with time_limit(CASE_SECONDS):
            res = clf.classify([x, Image.open(DIGIT)])
        assert "NaN or infinite" in res[0].error and res[0].label == -1, name
        assert res[1].ok, name


def test_api_natural_inputs_are_answered(clf):
    base = Image.open(DIGIT)
    arr = np.asarray(base.convert("L"))
    good = {
        "numpy HW uint8": arr,
        "numpy HWC uint8": arr[:, :, None],
        "generator": (im for im in [base, base]),
        "mode 1": base.convert("1"),
        "uint8 tensor": torch.from_numpy(arr.copy())[None],
        "batch tensor": torch.zeros(3, 1, 8, 8),
        "tuple": (str(DIGIT),),
    }
    for name, images in good.items():
        assert api_case(clf, images) == "ok", name


def test_api_bad_classes_and_options_raise_clean_errors(clf):
    for classes in ([1, 2, 3], [], ["seven", "seven"], [None, "x"], 42):
        assert api_case(clf, [str(DIGIT)], classes) == "error", classes
    model = clf.model
    for kwargs in (
        {"temperature": 0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"seed": -1},
        {"seed": 1.5},
        {"batch_size": 0},
        {"max_inflight": 0},
        {"n_grid": 0},
        {"policy": "magic"},
    ):
        opts = {"policy": "exhaustive", "n_grid": 2, "use_cache": False} | kwargs
        with pytest.raises(API_ERRORS):
            DiffusionClassifier(model, **opts)
