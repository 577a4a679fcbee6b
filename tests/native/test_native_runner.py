"""diffcls-run (C++, AOTInductor) against diffcls-fast classify (Python, eager torch) on held-out digits.

The same saved noise (the export's noise.safetensors, the --noise-path convention), the same seed:
the same labels, evaluation counts and per-class score counts, and mean errors within 1e-5
relative (the two run different float32 kernels: AOTInductor's vs eager torch's).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diffcls_fast.data.digits import load_split
from diffcls_fast.export.aoti_export import save_pixels
from diffcls_fast.images import preprocess

from .conftest import ONE_THREAD, run_cli

N_IMAGES = 12


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The first held-out digits as PNG files, and the same pixels as one tensor file."""
    import torch

    folder = tmp_path_factory.mktemp("heldout")
    pil, labels, _ = load_split("heldout")
    paths = []
    for i, im in enumerate(pil[:N_IMAGES]):
        p = folder / f"d{i:02d}.png"
        im.save(p)
        paths.append(str(p))
    tensors = folder / "heldout.safetensors"
    save_pixels(torch.stack([preprocess(im, 8, 1) for im in pil[:N_IMAGES]]), tensors)
    return paths, str(tensors), list(labels[:N_IMAGES])


def run_native(build, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(build / "diffcls-run"), *map(str, args)], capture_output=True, text=True, timeout=600, env=ONE_THREAD
    )


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def png_support(build) -> bool:
    return "png yes" in run_native(build, "--version").stdout


def assert_same(native: list[dict], python: list[dict], rtol: float = 1e-5) -> None:
    assert len(native) == len(python)
    for a, b in zip(native, python):
        assert a["error"] is None and b["error"] is None
        assert (a["label"], a["label_index"]) == (b["label"], b["label_index"])
        assert a["evaluations"] == b["evaluations"]
        assert a["n_scores"] == b["n_scores"]
        assert a["policy"] == b["policy"]
        names = list(b["mean_errors"])
        for n in names:
            if b["mean_errors"][n] is None:
                assert a["mean_errors"][n] is None
            else:
                np.testing.assert_allclose(
                    a["mean_errors"][n], b["mean_errors"][n], rtol=rtol, err_msg=f"{a.get('image')}: class {n}"
                )
        np.testing.assert_allclose([t["p"] for t in a["top"]], [t["p"] for t in b["top"]], atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy_args",
    [
        ["--policy", "ttest"],
        ["--policy", "ttest", "--seed", "7", "--t-order", "random", "--min-scores", "10"],
        ["--policy", "ttest", "--seed", str(2**40 + 3), "--sides", "1", "--cutoff-pval", "0.01"],
        ["--policy", "exhaustive", "--n-grid", "10"],
    ],
    ids=["ttest-default", "ttest-random-seed7", "ttest-bigseed-1sided", "exhaustive-10"],
)
def test_native_runner_equals_python_engine(native_build, aoti_dir, heldout, policy_args):
    paths, tensors, labels = heldout
    noise = aoti_dir / "noise.safetensors"
    py = run_cli("classify", *paths, "--json", "--noise-path", str(noise), "--device", "cpu", *policy_args)
    assert py.returncode == 0, py.stderr
    want = rows(py.stdout)
    # The tensor file holds the same pixels as the PNGs: the same image keys, so the same timesteps.
    nat = run_native(native_build, aoti_dir, tensors, "--json", *policy_args)
    assert nat.returncode == 0, nat.stderr
    assert_same(rows(nat.stdout), want)
    if png_support(native_build):
        nat_png = run_native(native_build, aoti_dir, *paths, "--json", *policy_args)
        assert nat_png.returncode == 0, nat_png.stderr
        got = rows(nat_png.stdout)
        assert [r["image"] for r in got] == paths
        assert_same(got, want)
    acc = np.mean([r["label_index"] == y for r, y in zip(want, labels)])
    assert acc >= 0.9  # a sanity check that the export is the real model


def test_native_runner_text_output_and_determinism(native_build, aoti_dir, heldout):
    _, tensors, _ = heldout
    a = run_native(native_build, aoti_dir, tensors, "--batch-size", "7")
    b = run_native(native_build, aoti_dir, tensors, "--batch-size", "32")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    # Results never depend on the batch size (speculation changes the compute spent, not the answer).
    strip = [line.split("evals")[0] for line in a.stdout.splitlines()]
    assert strip == [line.split("evals")[0] for line in b.stdout.splitlines()]
    assert len(a.stdout.splitlines()) == N_IMAGES and ": " in a.stdout and "[top-5: " in a.stdout
    assert "# digits [aoti, float32, cpu, native], ttest(min=20" in a.stderr


def test_native_runner_user_errors(native_build, aoti_dir, tmp_path):
    def one_line_error(r, *words):
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffcls-run: error: "), r.stderr
        for w in words:
            assert w in lines[0]

    one_line_error(run_native(native_build, tmp_path, "x.png"), "no manifest.json")
    one_line_error(run_native(native_build, aoti_dir), "need EXPORT_DIR and at least one IMAGE")
    one_line_error(run_native(native_build, aoti_dir, tmp_path / "missing.png"), "no such file")
    one_line_error(run_native(native_build, aoti_dir, "x.png", "--policy", "adaptive"), "ttest and exhaustive")
    one_line_error(run_native(native_build, aoti_dir, "x.png", "--seed", "-1"), "--seed")
    one_line_error(run_native(native_build, aoti_dir, "x.png", "--bogus"), "unknown option --bogus")
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(run_native(native_build, aoti_dir, tmp_path / "notes.txt"), "expected a .png or a .safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    one_line_error(run_native(native_build, aoti_dir, bad), "not a safetensors file")
    if png_support(native_build):
        from PIL import Image

        Image.new("L", (16, 16)).save(tmp_path / "big.png")
        one_line_error(run_native(native_build, aoti_dir, tmp_path / "big.png"), "16x16", "8x8")
        Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
        one_line_error(run_native(native_build, aoti_dir, tmp_path / "rgb.png"), "8-bit grayscale")
        Image.new("L", (8, 8), 200).save(tmp_path / "full.png")
        (tmp_path / "torn.png").write_bytes((tmp_path / "full.png").read_bytes()[:-20])  # truncated: no libpng line
        one_line_error(run_native(native_build, aoti_dir, tmp_path / "torn.png"), "torn.png: cannot decode PNG")
    import torch
    from safetensors.torch import save_file

    for name, tensors, words in (
        ("rank.safetensors", {"image": torch.zeros(8, 8)}, ("rank.safetensors", "shape [8, 8]", "[1, 8, 8]")),
        ("rank4.safetensors", {"images": torch.zeros(2, 8, 8)}, ("'images' has shape [2, 8, 8]", "[N, 1, 8, 8]")),
        ("none.safetensors", {"images": torch.zeros(0, 1, 8, 8)}, ("none.safetensors", "holds no images (N = 0)")),
        (
            "range.safetensors",
            {"images": torch.full((2, 1, 8, 8), 0.5).index_fill_(0, torch.tensor([1]), 3.0)},
            ("range.safetensors#1", "expected [-1, 1]"),
        ),
    ):
        save_file(tensors, str(tmp_path / name))
        one_line_error(run_native(native_build, aoti_dir, tmp_path / name), *words)


def test_native_runner_noise_rows_are_checked(native_build, aoti_dir, heldout, tmp_path):
    import torch
    from safetensors.torch import save_file

    _, tensors, _ = heldout
    save_file({"noise": torch.randn(5, 1, 8, 8)}, str(tmp_path / "short.safetensors"))
    r = run_native(native_build, aoti_dir, tensors, "--noise", tmp_path / "short.safetensors")
    assert r.returncode == 2 and "saved noise has 5 rows, but sample" in r.stderr, r.stderr
    save_file({"noise": torch.randn(5, 1, 4, 4)}, str(tmp_path / "shape.safetensors"))
    r = run_native(native_build, aoti_dir, tensors, "--noise", tmp_path / "shape.safetensors")
    assert r.returncode == 2 and "'noise' must be [N, 1, 8, 8]" in r.stderr, r.stderr


@pytest.mark.slow
def test_native_runner_prompt_ensembles_and_class_subset(native_build, aoti_dir, aoti_cache, heldout, tmp_path):
    """An export for a prompts CSV (ensembles: several prompts per class) reuses the cached package
    (no second compile) and scores each class as the mean over its prompts, as the engine does."""
    import os

    paths, tensors, _ = heldout
    csv = tmp_path / "prompts.csv"
    csv.write_text(
        "classidx,prompt,classname\n"
        "0,a handwritten digit zero,zero\n0,the number zero,zero\n"
        "1,a handwritten digit one,one\n"
        "2,a handwritten digit seven,seven\n2,the number seven,seven\n2,seven,seven\n"
        "3,a handwritten digit nine,nine\n"
    )
    out = tmp_path / "ens"
    noise = str(aoti_dir / "noise.safetensors")
    r = run_cli(
        "export",
        "--format",
        "aoti",
        "--batch-sizes",
        "32",
        "--out",
        str(out),
        "--cache-dir",
        str(aoti_cache),
        "--prompts",
        str(csv),
        "--noise-path",
        noise,
        env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr
    assert "[cached;" in r.stdout  # the package compiled for the session's export
    man = json.loads((out / "manifest.json").read_text())
    assert man["classes"] == ["zero", "one", "seven", "nine"] and man["class_prompts"] == [[0, 1], [2], [3, 4, 5], [6]]
    for policy in (["--policy", "exhaustive", "--n-grid", "5"], ["--policy", "ttest", "--seed", "11"]):
        py = run_cli(
            "classify",
            *paths,
            "--json",
            "--prompts",
            str(csv),
            "--noise-path",
            str(out / "noise.safetensors"),
            "--device",
            "cpu",
            *policy,
        )
        assert py.returncode == 0, py.stderr
        nat = run_native(native_build, out, tensors, "--json", *policy)
        assert nat.returncode == 0, nat.stderr
        assert_same(rows(nat.stdout), rows(py.stdout))


def test_native_runner_refuses_a_changed_or_inconsistent_export(native_build, aoti_dir, heldout, tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    _, tensors, _ = heldout
    changed = tmp_path / "changed"
    shutil.copytree(aoti_dir, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    save_file({"noise": torch.randn(64, 1, 8, 8)}, str(changed / manifest["files"]["noise"]))  # swapped after export
    r = run_native(native_build, changed, tensors)
    assert r.returncode == 2 and "sha256 differs from the manifest's" in r.stderr, r.stderr
    shutil.copy(Path(aoti_dir) / manifest["files"]["noise"], changed / manifest["files"]["noise"])
    manifest["class_prompts"] = manifest["class_prompts"][:-1]  # a hand-edited manifest
    (changed / "manifest.json").write_text(json.dumps(manifest))
    r = run_native(native_build, changed, tensors)
    assert r.returncode == 2 and "class_prompts and classes differ" in r.stderr, r.stderr
    manifest = json.loads((Path(aoti_dir) / "manifest.json").read_text())
    (changed / "manifest.json").write_text(json.dumps({**manifest, "torch": "2.1.2+cpu"}))  # exported by another torch
    r = run_native(native_build, changed, tensors)
    assert (
        r.returncode == 2
        and "exported with torch 2.1.2+cpu" in r.stderr
        and f"libtorch {torch.__version__.split('+')[0]}" in r.stderr
    ), r.stderr
    (changed / "manifest.json").write_text(
        json.dumps({**manifest, "torch": torch.__version__.split("+")[0] + "-local"})
    )  # same major.minor
    pkg = changed / manifest["packages"][0]["file"]
    with open(pkg, "r+b") as f:  # a package swapped or damaged after export
        f.seek(pkg.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = run_native(native_build, changed, tensors)
    assert (
        r.returncode == 2 and f"{pkg.name}: its sha256 differs from the manifest's (the package changed" in r.stderr
    ), r.stderr
