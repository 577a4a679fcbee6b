"""export --format aoti (the folder and its manifest) and --backend aoti (in-process) against eager torch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data.digits import CLASS_NAMES, load_split
from diffcls_fast.engine.conditions import encode_conditions
from diffcls_fast.export import apply_backend
from diffcls_fast.export.aoti_export import PackageRange, PackageSet, has_upsample_guard, package_ranges

from .conftest import EXPORT_BATCH, run_cli


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu", implementation="diffusers")  # what export loads and traces


def test_package_ranges_split_at_the_upsample_guard():
    assert package_ranges([8, 16, 32], 64) == [PackageRange(2, 32)]
    assert package_ranges([8, 16, 32, 64, 128, 256], 64) == [PackageRange(2, 63), PackageRange(64, 256)]
    assert package_ranges([64, 256], 64) == [PackageRange(2, 63), PackageRange(64, 256)]
    assert package_ranges([1], 64) == [PackageRange(2, 2)]
    assert package_ranges([8, 512], None) == [PackageRange(2, 512)]


def test_the_digits_unet_has_the_guard(digits):
    # diffusers' Upsample2D calls .contiguous() only for batch >= 64; torch.export guards on it.
    assert has_upsample_guard(digits.network)


def test_package_set_picks_the_range_and_pads_batch_one():
    calls = []

    def fake(lo):
        def run(x, t, c):
            calls.append((lo, x.shape[0]))
            return x * 2

        return run

    ps = PackageSet([(PackageRange(64, 128), fake(64)), (PackageRange(2, 63), fake(2))])
    x = torch.arange(4.0).view(1, 1, 2, 2)
    out = ps(x, torch.tensor([5]), torch.zeros(1, 3, 4))
    assert out.shape == (1, 1, 2, 2) and torch.equal(out, x * 2)
    ps(torch.zeros(100, 1, 2, 2), torch.zeros(100, dtype=torch.long), torch.zeros(100, 3, 4))
    assert calls == [(2, 2), (64, 100)]
    with pytest.raises(ValueError, match="up to 128"):
        ps(torch.zeros(129, 1, 2, 2), torch.zeros(129, dtype=torch.long), torch.zeros(129, 3, 4))


def test_export_folder_and_manifest(aoti_dir, digits):
    man = json.loads((aoti_dir / "manifest.json").read_text())
    assert man["format"] == "diffcls-fast-aoti" and man["version"] == 1
    assert man["fingerprint"] == digits.fingerprint and man["model"] == "digits"
    assert man["latent_shape"] == [1, 8, 8] and man["cond_shape"] == list(digits.cond_shape)
    assert man["batch_sizes"] == [EXPORT_BATCH]
    assert [(p["min_batch"], p["max_batch"]) for p in man["packages"]] == [(2, EXPORT_BATCH)]
    assert (aoti_dir / man["packages"][0]["file"]).is_file()
    modes = {p.name: p.stat().st_mode & 0o777 for p in aoti_dir.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the tensors are as readable as the manifest that names them
    assert man["classes"] == CLASS_NAMES and man["class_prompts"] == [[i] for i in range(10)]
    assert man["preprocessing"] == {
        "height": 8,
        "width": 8,
        "channels": 1,
        "pixel_scale": 127.5,
        "pixel_offset": -1.0,
        "latent_is_pixels": True,
    }
    assert set(man["calibration"]) >= {"ttest", "exhaustive"}
    for name, f in man["files"].items():
        assert hashlib.sha256((aoti_dir / f).read_bytes()).hexdigest() == man["sha256"][name]
    for pk in man["packages"]:
        assert hashlib.sha256((aoti_dir / pk["file"]).read_bytes()).hexdigest() == pk["sha256"]
    # The tables are the engine's own: the condition table classify builds, the runner's x_t coefficients.
    clf = DiffusionClassifier(digits, "ttest")
    spec = clf.class_spec(None)
    assert man["prompts"] == spec.prompts
    cond = load_file(str(aoti_dir / "conditions.safetensors"))["cond"]
    assert torch.equal(cond, encode_conditions(clf.model, spec, clf.config.cache).float())
    sched = load_file(str(aoti_dir / "schedule.safetensors"))
    acp = digits.alphas_cumprod.double()
    assert torch.equal(sched["alphas_cumprod"], acp)
    assert torch.equal(sched["sqrt_ab"], acp.sqrt().float()) and torch.equal(
        sched["sqrt_1mab"], (1 - acp).sqrt().float()
    )
    assert load_file(str(aoti_dir / "noise.safetensors"))["noise"].shape == (2000, 1, 8, 8)


def test_aoti_backend_denoise_matches_torch(aoti_dir, aoti_cache, digits):
    # The export compiled into aoti_cache; the backend finds the package there (no second compile).
    before = sorted(p.name for p in (aoti_cache / "export").glob("*.pt2"))
    bundle = apply_backend(digits, "aoti", batch_sizes=[8, 16, EXPORT_BATCH], cache_dir=aoti_cache)
    assert bundle.backend == "aoti"
    assert sorted(p.name for p in (aoti_cache / "export").glob("*.pt2")) == before
    g = torch.Generator().manual_seed(0)
    for b in (1, 7, EXPORT_BATCH):
        x = torch.randn(b, 1, 8, 8, generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)
        cond = digits.encode_prompts([f"a handwritten digit {CLASS_NAMES[i % 10]}" for i in range(b)])
        torch.testing.assert_close(bundle.denoise(x, t, cond), digits.denoise(x, t, cond), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_aoti_backend_same_predictions_as_torch(aoti_cache, digits):
    pil, _, _ = load_split("heldout")
    pil = pil[:12]
    kw = dict(batch_size=EXPORT_BATCH, use_cache=False, seed=3)
    ref = DiffusionClassifier(digits, "ttest", **kw).classify(pil, CLASS_NAMES)
    aoti = DiffusionClassifier(
        apply_backend(digits, "aoti", batch_sizes=[8, 16, EXPORT_BATCH], cache_dir=aoti_cache), "ttest", **kw
    ).classify(pil, CLASS_NAMES)
    assert [r.label for r in aoti] == [r.label for r in ref]
    assert [r.evaluations for r in aoti] == [r.evaluations for r in ref]
    for a, b in zip(aoti, ref):
        np.testing.assert_allclose(a.mean_errors, b.mean_errors, rtol=1e-4)


def test_export_aoti_user_errors(tmp_path):
    def one_line(r, words):
        assert r.returncode == 2, r.stderr
        assert (
            r.stderr.startswith("diffcls-fast: error: ")
            and len(r.stderr.strip().splitlines()) == 1
            and words in r.stderr
        ), r.stderr

    out = str(tmp_path / "x")
    one_line(
        run_cli("export", "--format", "aoti", "--out", out, "--classes", "one,two", "--prompts", "p.csv"), "not both"
    )
    one_line(
        run_cli("export", "--format", "aoti", "--out", out, "--noise-path", str(tmp_path / "missing.safetensors")),
        "no such noise file",
    )
    one_line(run_cli("export", "--format", "aoti", "--out", out, "--dtype", "fp16"), "exports float32")
    one_line(run_cli("export", "--format", "aoti", "--out", out, "--batch-sizes", "8,x"), "comma-separated integers")
    one_line(run_cli("export", "--format", "aoti", "--out", out, "--batch-sizes", "100000000"), "up to 4096")
    one_line(run_cli("export", "--format", "aoti", "--out", out, "--classes", "one,one"), "duplicate class name")
    (tmp_path / "file").write_text("")
    one_line(run_cli("export", "--format", "aoti", "--out", str(tmp_path / "file")), "not a folder")
    # batch 1 is padded to 2 and says so (checked before the folder, so the refusal below ends the run at once)
    r = run_cli("export", "--format", "aoti", "--out", str(tmp_path / "file"), "--batch-sizes", "1")
    assert r.returncode == 2 and "note: --batch-sizes 1: a batch of 1 runs padded to 2" in r.stderr, r.stderr


def test_export_aoti_refuses_a_flow_model(tmp_path):
    """The native runner noises with alphas_cumprod and scores ε: a flow model's export would score wrongly."""
    from types import SimpleNamespace

    from diffcls_fast import UserError
    from diffcls_fast.export.aoti_export import export_aoti

    clf = SimpleNamespace(model=SimpleNamespace(name="numbers-flow", prediction_type="flow"))
    with pytest.raises(UserError, match="numbers-flow: the native runner scores the DDPM family only"):
        export_aoti(clf, tmp_path / "out", [8], tmp_path / "art")
