"""--backend onnx and aoti on the families: SDXL and SD3 export to ONNX (their packed condition and σ table inside
the traced module) and score as eager torch does; PixArt and Flux are refused by ONNX in one line saying why; all
four run under aoti."""

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.export import apply_backend
from diffcls_fast.export.onnx_export import export_onnx

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'diffcls-fast[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'diffcls-fast[onnx]')")


@pytest.mark.parametrize("fam", ["sdxl", "sd3"])
def test_onnx_matches_torch(family_folder, tmp_path, fam):
    model = load_model(str(family_folder(fam)), device="cpu")
    art = export_onnx(model, tmp_path / "exp")
    assert art.max_abs_error < 1e-4
    ort = apply_backend(model, "onnx", cache_dir=tmp_path / "c")
    x = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 400, 990])  # every row its own timestep (SD3: its own σ)
    cond = model.encode_prompts(["a cat", "a dog", "a bird"])
    torch.testing.assert_close(ort.denoise(x, t, cond), model.denoise(x, t, cond), atol=1e-4, rtol=1e-4)
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(2)]
    ref = DiffusionClassifier(model, "exhaustive", n_grid=3, use_cache=False).classify(images, ["cat", "dog"])
    got = DiffusionClassifier(ort, "exhaustive", n_grid=3, use_cache=False).classify(images, ["cat", "dog"])
    assert [r.label for r in got] == [r.label for r in ref]
    np.testing.assert_allclose([r.mean_errors for r in got], [r.mean_errors for r in ref], rtol=1e-3)


@pytest.mark.parametrize("fam, why", [("pixart", "squeeze"), ("flux", "rms_norm")])
def test_onnx_refused_with_the_reason(family_folder, tmp_path, fam, why):
    model = load_model(str(family_folder(fam)), device="cpu")
    with pytest.raises(UserError, match=f"{fam} models do not export to ONNX: .*{why}") as e:
        apply_backend(model, "onnx", cache_dir=tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["sdxl", "sd3", "pixart", "flux"])
def test_aoti_backend_matches_torch(family_folder, tmp_path, fam):
    """--backend aoti traces the same module (packed condition, σ table, Flux's packing): torch.export takes PixArt
    and Flux, which the ONNX exporter does not. About a minute (SD3: several) of C++ compile per model on a small
    CPU."""
    from diffcls_fast.export.aoti_export import require_aoti

    try:
        require_aoti()
    except UserError as e:
        pytest.skip(str(e))
    model = load_model(str(family_folder(fam)), device="cpu")
    aoti = apply_backend(model, "aoti", cache_dir=tmp_path, batch_sizes=[4])
    x = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 400, 990])
    cond = model.encode_prompts(["a cat", "a dog", "a bird"])
    torch.testing.assert_close(aoti.denoise(x, t, cond), model.denoise(x, t, cond), atol=1e-4, rtol=1e-4)


def test_cli_onnx_refusal_is_one_line(family_folder, tmp_path, capsys):
    from diffcls_fast.cli import main

    from ..models.tiny_folders import make_image_folder

    data = make_image_folder(tmp_path / "data", ["cat"], per_class=1)
    img = next((data / "cat").iterdir())
    model = ["--model", str(family_folder("flux")), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    capsys.readouterr()  # building the folder logs
    code = main(["classify", str(img), *model, "--classes", "cat,dog", "--backend", "onnx", "--no-cache"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flux models do not export to ONNX" in err[0], err
