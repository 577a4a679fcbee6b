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

from diffcls_fast.kernels.make_noisy import make_noisy as tri_make_noisy  # noqa: E402
from diffcls_fast.kernels.query_errors import query_errors as tri_query_errors  # noqa: E402

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
    out = torch.full((q, *shape[3:]), float("nan"), dtype=dtype, device=DEVICE)  # poisoned: every element must be written
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


def test_int64_offsets_large_q_times_elements():
    # Q x elements beyond 2^31 would overflow int32 offsets. A full-size tensor is too big for the
    # interpreter, so: a zero-stride expanded eps_hat with 2^31 + elements addresses... is not possible
    # without materialising it; instead check the kernel's offset arithmetic on the last row of a
    # tensor whose flat index of that row exceeds 2^31 in int64 terms, using a strided int8-free view.
    q, n = 3, (1 << 30) // 4  # 3 rows x 2^28 elements: the last row starts at element 2^29 (fits, but
    # the row * n_elements product is computed in int64 by the kernel; verified symbolically below).
    assert q * n < 2**31  # the real >2^31 case is exercised on GPU by bench/kernels.py
    # Launcher-level check: the kernels cast program ids to int64 before multiplying.
    import inspect

    from diffcls_fast.kernels import make_noisy as mn_mod
    from diffcls_fast.kernels import query_errors as qe_mod

    for mod in (mn_mod, qe_mod):
        src = inspect.getsource(mod)
        assert "tl.program_id(0).to(tl.int64)" in src


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
