"""TensorRT: what can be tested without it (profiles, cache keys), and the engine itself when present."""

import pytest
import torch

from diffcls_fast import load_model
from diffcls_fast.export.spec import spec_for
from diffcls_fast.export.tensorrt_backend import engine_key


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu")


def test_one_static_profile_per_bucket(digits):
    spec = spec_for(digits)
    profs = spec.profiles([32, 8, 128, 8])
    assert len(profs) == 3
    assert profs[0]["sample"] == ((8, 1, 8, 8),) * 3
    assert profs[2]["timestep"] == ((128,),) * 3  # per-sample t: a [B] input
    assert profs[1]["cond"][0] == (32, *digits.cond_shape)


def test_engine_cache_key_covers_model_shapes_and_version(digits):
    spec = spec_for(digits)
    k = engine_key(digits, spec, [8, 32], "10.3.0")
    assert k == engine_key(digits, spec, [32, 8], "10.3.0")  # order-free
    assert k != engine_key(digits, spec, [8, 32, 128], "10.3.0")
    assert k != engine_key(digits, spec, [8, 32], "10.4.0")
    import dataclasses

    other = dataclasses.replace(digits, fingerprint="different-weights")
    assert k != engine_key(other, spec, [8, 32], "10.3.0")


def test_tensorrt_engine_matches_torch(digits, tmp_path):
    pytest.importorskip(
        "tensorrt",
        reason="tensorrt is not installed (its PyPI package fetches the wheel from NVIDIA's index, unreachable here)",
    )
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from diffcls_fast.export import apply_backend

    m = load_model("digits", device="cuda", dtype="fp16")
    trt_m = apply_backend(m, "tensorrt", batch_sizes=[8], cache_dir=tmp_path)
    x = torch.randn(8, 1, 8, 8, device="cuda", dtype=torch.float16)
    t = torch.randint(0, 1000, (8,), device="cuda")
    cond = m.encode_prompts(["a handwritten digit one"] * 8)
    torch.testing.assert_close(trt_m.denoise(x, t, cond).float(), m.denoise(x, t, cond).float(), atol=2e-2, rtol=2e-2)
