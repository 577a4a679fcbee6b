"""Triton kernels against the plain-torch reference (CPU: under TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from diffcls_fast import kernels
from diffcls_fast.kernels import reference

from ..utils import assert_verbose_allclose

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from diffcls_fast.kernels.dispatch import interpreter_problem  # noqa: E402
from diffcls_fast.kernels.fused_errors import query_errors as tri_query_errors  # noqa: E402
from diffcls_fast.kernels.fused_noise import make_noisy as tri_make_noisy  # noqa: E402

if DEVICE == "cpu" and interpreter_problem():  # e.g. Triton 3.6 with numpy >= 2.4 (the GPU machine's image)
    pytest.skip(interpreter_problem(), allow_module_level=True)

# (Q, I, N, C, H, W): Q=1, 1,023 elements per query (3x11x31), channel counts not a power of two, repeats.
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (1, 1, 1, 3, 11, 31),
    (5, 2, 3, 3, 7, 9),
    (17, 4, 2, 5, 8, 8),
    (64, 3, 7, 4, 16, 16),
]
DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 1.6e-2, 1.6e-2)]


def _inputs(q, i, n, c, h, w, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(i, c, h, w, generator=g).to(DEVICE, dtype)
    eps = torch.randn(n, c, h, w, generator=g).to(DEVICE, dtype)
    img_idx = torch.randint(0, i, (q,), generator=g).to(DEVICE)
    noise_idx = torch.randint(0, n, (q,), generator=g).to(DEVICE)
    if q > 2:  # repeated indices on purpose
        img_idx[1] = img_idx[0]
        noise_idx[2] = noise_idx[0]
    a = torch.rand(q, generator=g).to(DEVICE)
    b = (1 - a * a).sqrt()
    return x0, eps, img_idx, noise_idx, a, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_make_noisy_matches_reference(shape, dtype, atol, rtol):
    x0, eps, img_idx, noise_idx, a, b = _inputs(*shape, dtype, seed=hash(shape) % 1000)
    q = shape[0]
    out = torch.full(
        (q, *shape[3:]), float("nan"), dtype=dtype, device=DEVICE
    )  # poisoned: every element must be written
    got = tri_make_noisy(x0, eps, img_idx, noise_idx, a, b, out=out)
    assert got.data_ptr() == out.data_ptr()
    want = reference.make_noisy(x0, eps, img_idx, noise_idx, a, b)
    assert_verbose_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("kind", ["l2", "l1", "huber"])
@pytest.mark.parametrize("weighted", [False, True])
def test_query_errors_matches_reference(shape, dtype, atol, rtol, kind, weighted):
    q, _, n, c, h, w = shape
    g = torch.Generator().manual_seed(q * 7 + n)
    eps = torch.randn(n, c, h, w, generator=g).to(DEVICE, dtype)
    eps_hat = (torch.randn(q, c, h, w, generator=g) * 1.5).to(DEVICE, dtype)
    noise_idx = torch.randint(0, n, (q,), generator=g).to(DEVICE)
    weight = torch.rand(q, generator=g).to(DEVICE) * 3 if weighted else None
    got = tri_query_errors(eps_hat, eps, noise_idx, kind=kind, weight=weight)
    want = reference.query_errors(eps_hat, eps, noise_idx, kind=kind, weight=weight)
    assert got.dtype == torch.float32 and got.shape == (q,)
    # Both accumulate in float32 from the same rounded inputs; only summation order differs.
    assert_verbose_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nan_propagates():
    x0, eps, img_idx, noise_idx, a, b = _inputs(6, 2, 3, 2, 5, 5, torch.float32, seed=3)
    x0[1, 0, 2, 2] = float("nan")
    got = tri_make_noisy(x0, eps, img_idx, noise_idx, a, b)
    want = reference.make_noisy(x0, eps, img_idx, noise_idx, a, b)
    assert_verbose_allclose(got, want, rtol=1e-6, atol=1e-6)
    eps_hat = torch.randn(6, 2, 5, 5, device=DEVICE)
    eps_hat[4, 1, 0, 0] = float("nan")
    e = tri_query_errors(eps_hat, eps, noise_idx)
    assert torch.isnan(e[4]) and not torch.isnan(e[torch.arange(6, device=DEVICE) != 4]).any()


def test_out_may_be_larger_static_buffer():
    x0, eps, img_idx, noise_idx, a, b = _inputs(5, 2, 3, 4, 4, 4, torch.float16, seed=1)
    buf = torch.full((8, 4, 4, 4), float("nan"), dtype=torch.float16, device=DEVICE)
    tri_make_noisy(x0, eps, img_idx, noise_idx, a, b, out=buf)
    want = reference.make_noisy(x0, eps, img_idx, noise_idx, a, b)
    assert_verbose_allclose(buf[:5], want, rtol=2e-3, atol=2e-3)
    assert torch.isnan(buf[5:]).all()  # rows past Q are untouched


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_int64_offsets_beyond_2_pow_31(tmp_path, index_dtype):
    """Row offsets past 2^31 elements must not wrap (the kernels multiply in int64).

    A full [Q, E] tensor with Q * E > 2^31 is too big for the interpreter, so the
    rows live in a sparse memory-mapped file with a row stride of 2^31 elements:
    the second row starts past int32 range while only a few KiB are touched.
    """
    if DEVICE != "cpu":
        pytest.skip("the sparse-file trick is for the CPU interpreter; GPU runs use bench/kernels.py sizes")
    stride, e = 1 << 31, 3 * 7 * 11  # 231 elements per row
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate((stride + e) * 2)  # fp16: a 4 GiB sparse file, no pages allocated
    storage = torch.from_file(str(path), shared=True, size=stride + e, dtype=torch.float16)
    big = storage.as_strided((2, 3, 7, 11), (stride, 77, 11, 1))
    g = torch.Generator().manual_seed(0)
    big[0] = torch.randn(3, 7, 11, generator=g).half()
    big[1] = torch.randn(3, 7, 11, generator=g).half()
    eps = torch.randn(2, 3, 7, 11, generator=g).half()
    img_idx = torch.tensor([1, 0, 1], dtype=index_dtype)
    noise_idx = torch.tensor([0, 1, 1], dtype=index_dtype)
    a, b = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.4, 0.8, 0.99])
    got = tri_make_noisy(big, eps, img_idx, noise_idx, a, b)
    want = reference.make_noisy(big.contiguous(), eps, img_idx, noise_idx, a, b)
    assert_verbose_allclose(got, want, rtol=2e-3, atol=2e-3)
    # query_errors reading eps_hat rows past 2^31 (eps_hat = the big view, row q at q * 2^31)
    got_e = tri_query_errors(big, eps, torch.tensor([1, 0], dtype=index_dtype), kind="l1")
    want_e = reference.query_errors(big.contiguous(), eps, torch.tensor([1, 0]), kind="l1")
    assert_verbose_allclose(got_e, want_e, rtol=1e-5, atol=1e-6)


def test_dispatch_reports_backend(monkeypatch):
    x0, eps, img_idx, noise_idx, a, b = _inputs(4, 2, 2, 1, 4, 4, torch.float32, seed=0)
    monkeypatch.setenv("DIFFCLS_KERNELS", "reference")
    kernels.make_noisy(x0, eps, img_idx, noise_idx, a, b)
    kernels.query_errors(x0[img_idx], eps, noise_idx)
    assert kernels.active_backend() == "reference"
    monkeypatch.setenv("DIFFCLS_KERNELS", "triton")
    kernels.make_noisy(x0, eps, img_idx, noise_idx, a, b)
    kernels.query_errors(x0[img_idx], eps, noise_idx)
    assert kernels.active_backend() == "triton"
    monkeypatch.setenv("DIFFCLS_KERNELS", "bogus")
    with pytest.raises(kernels.dispatch.BackendUnavailable):
        kernels.make_noisy(x0, eps, img_idx, noise_idx, a, b)


def test_engine_results_identical_with_triton_kernels(monkeypatch):
    """The runner through the Triton kernels (interpreter on CPU) gives the reference's results."""
    import numpy as np

    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.data.digits import load_split

    model = load_model("digits", device=DEVICE)
    pil, _, _ = load_split("heldout")
    runs = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("DIFFCLS_KERNELS", mode)
        clf = DiffusionClassifier(model, "exhaustive", n_grid=5, batch_size=64, use_cache=False)
        runs[mode] = clf.classify(pil[:3])
        assert clf.last_stats.kernels == mode
    for a, b in zip(runs["reference"], runs["triton"]):
        assert a.label == b.label
        np.testing.assert_allclose(a.mean_errors, b.mean_errors, rtol=1e-5, atol=1e-7)
