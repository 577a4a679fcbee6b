"""Every family's tiny folder on CUDA against the CPU (``pytest -m cuda``; ``python -m bench.gpu`` runs these).

fp32 without TF32 on the GPU, so the two differ only in summation order: the same labels, and mean errors
within 1e-3. The CUDA engine overlaps by default (batch k+1 prepared while batch k runs), so this also runs
the flow-matching families (SD3, Flux) through the overlapped engine.
"""

import numpy as np
import pytest
import torch

from diffcls_fast import DiffusionClassifier, load_model

from .test_classify import CLASSES, FAMILIES, _images

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (python -m bench.gpu runs these)"),
]


@pytest.mark.parametrize("fam", FAMILIES)
def test_family_on_cuda_matches_cpu(family_folder, fam):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = {}
        for device in ("cpu", "cuda"):
            model = load_model(str(family_folder(fam)), device=device, dtype="fp32")
            clf = DiffusionClassifier(model, "exhaustive", n_grid=4, batch_size=16, use_cache=False)
            assert clf.config.overlap is (device == "cuda")
            out[device] = clf.classify(_images(), CLASSES)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    for a, b in zip(out["cpu"], out["cuda"]):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.label == b.label
        np.testing.assert_allclose(b.mean_errors, a.mean_errors, rtol=1e-3)
