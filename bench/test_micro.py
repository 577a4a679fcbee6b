"""Microbenchmarks (pytest-benchmark): ``pytest bench --benchmark-only``. Not part of the test run.

Kernels: the torch reference everywhere, the Triton kernels on CUDA. Backends:
one denoiser call of the bundled model at batch 256 on each available backend.
"""

import pytest
import torch

from diffcls_fast import load_model
from diffcls_fast.kernels import reference

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _inputs(q=256, shape=(4, 64, 64), dtype=torch.float16 if CUDA else torch.float32):
    x0 = torch.randn(q // 8, *shape, device=DEV, dtype=dtype)
    eps = torch.randn(q // 4, *shape, device=DEV, dtype=dtype)
    img = torch.randint(0, q // 8, (q,), device=DEV)
    nz = torch.randint(0, q // 4, (q,), device=DEV)
    a = torch.rand(q, device=DEV)
    return x0, eps, img, nz, a, (1 - a * a).sqrt(), torch.randn(q, *shape, device=DEV, dtype=dtype)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_make_noisy(benchmark, impl):
    if impl == "triton" and not CUDA:
        pytest.skip("triton kernels are timed on CUDA only (the CPU interpreter is not a performance path)")
    from diffcls_fast.kernels.fused_noise import make_noisy as tri

    fn = tri if impl == "triton" else reference.make_noisy
    x0, eps, img, nz, a, b, _ = _inputs()
    out = torch.empty(len(img), *x0.shape[1:], device=DEV, dtype=x0.dtype)
    benchmark(lambda: (fn(x0, eps, img, nz, a, b, out=out), _sync()))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_query_errors(benchmark, impl):
    if impl == "triton" and not CUDA:
        pytest.skip("triton kernels are timed on CUDA only (the CPU interpreter is not a performance path)")
    from diffcls_fast.kernels.fused_errors import query_errors as tri

    fn = tri if impl == "triton" else reference.query_errors
    _, eps, _, nz, _, _, hat = _inputs()
    benchmark(lambda: (fn(hat, eps, nz), _sync()))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_denoiser_backend(benchmark, backend, tmp_path_factory):
    from diffcls_fast.export import apply_backend

    m = apply_backend(load_model("digits"), backend, cache_dir=tmp_path_factory.mktemp("c"))
    x = torch.randn(256, *m.latent_shape, device=m.device, dtype=m.dtype)
    t = torch.randint(0, 1000, (256,), device=m.device)
    cond = m.encode_prompts(["a handwritten digit one"] * 256)
    benchmark(lambda: (m.denoise(x, t, cond), _sync()))
