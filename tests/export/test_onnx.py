"""ONNX export and the ONNX Runtime backend against eager torch (CPU)."""

import importlib.util

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.errors import BackendUnavailable
from diffcls_fast.export import apply_backend
from diffcls_fast.export.onnx_export import export_onnx

from ..models.tiny_folders import make_sd_folder

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'diffcls-fast[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'diffcls-fast[onnx]')")


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu")


def test_bundled_model_onnx_matches_torch(digits, tmp_path):
    art = export_onnx(digits, tmp_path)
    assert not art.cached and art.path.is_file()
    assert art.max_abs_error < 1e-4
    again = export_onnx(digits, tmp_path)
    assert again.cached and again.path == art.path  # valid artifact: no re-export
    art.path.write_bytes(b"broken")  # a corrupt artifact is exported again
    assert not export_onnx(digits, tmp_path).cached


def test_onnx_backend_denoise_matches_torch_per_sample_t(digits, tmp_path):
    ort_bundle = apply_backend(digits, "onnx", cache_dir=tmp_path)
    assert ort_bundle.backend == "onnx[cpu]"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 1, 8, 8, generator=g)
    t = torch.tensor([0, 3, 100, 250, 500, 750, 999])  # every row its own t
    cond = digits.encode_prompts(
        [f"a handwritten digit {n}" for n in ["one", "two", "three", "four", "five", "six", "seven"]]
    )
    torch.testing.assert_close(ort_bundle.denoise(x, t, cond), digits.denoise(x, t, cond), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_eval_backend_onnx_identical_predictions_on_heldout(digits, tmp_path):
    from diffcls_fast.data.digits import CLASS_NAMES, load_split

    pil, _, _ = load_split("heldout")
    pil = pil[::4]  # an even quarter of the split: the same comparison, a quarter of CI's time
    ref = DiffusionClassifier(digits, "ttest", use_cache=False).classify(pil, CLASS_NAMES)
    onnx = DiffusionClassifier(apply_backend(digits, "onnx", cache_dir=tmp_path), "ttest", use_cache=False).classify(
        pil, CLASS_NAMES
    )
    assert [r.label for r in onnx] == [r.label for r in ref]
    np.testing.assert_allclose(
        [np.nanmin(r.mean_errors) for r in onnx], [np.nanmin(r.mean_errors) for r in ref], rtol=1e-4
    )


def test_export_small_random_unet_with_cross_attention(tmp_path):
    folder = make_sd_folder(tmp_path / "sd", vae=True)
    m = load_model(str(folder), device="cpu")
    art = export_onnx(m, tmp_path / "exp")
    assert art.max_abs_error < 1e-4
    ort_m = apply_backend(m, "onnx", cache_dir=tmp_path / "c")
    x = torch.randn(5, *m.latent_shape)
    t = torch.tensor([1, 50, 400, 800, 999])
    cond = m.encode_prompts(["a cat", "a dog", "a car", "a cat", "a bird"])
    torch.testing.assert_close(ort_m.denoise(x, t, cond), m.denoise(x, t, cond), atol=1e-4, rtol=1e-4)


def test_unavailable_backends_say_so_in_one_line(digits):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendUnavailable, match=r"tensorrt is not installed; pip install 'diffcls-fast\[trt\]'"):
        apply_backend(digits, "tensorrt")
    with pytest.raises(BackendUnavailable, match="xformers"):
        apply_backend(digits, "torch", xformers=True)
