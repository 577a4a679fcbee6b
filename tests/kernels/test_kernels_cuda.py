"""The Triton kernels compiled for the GPU against float64 ground truth (CUDA only: ``pytest -m cuda``).

``tests/kernels/test_kernels.py`` checks the same kernels under the CPU interpreter;
these run them compiled, at the engine's shapes and dtypes (float32 latents and
noise in, the model's dtype out), at block boundaries, and past 2^31 elements.
Skipped without CUDA; ``python -m bench.gpu`` runs them on the H200.
"""

from __future__ import annotations

import os

import pytest
import torch

from diffcls_fast.kernels import reference

from ..utils import assert_verbose_allclose

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (Triton kernels compiled for the GPU; python -m bench.gpu runs these)",
    ),
]
DEV = "cuda"

# (Q, I, N, C, H, W). Odd sizes, one element, exactly one MAX_BLOCK (4096) and one past it, a single
# long row (query_errors splits it across programs), and the engine's SD batch (26 images, 64 noise rows).
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (1, 1, 1, 3, 11, 31),
    (5, 2, 3, 3, 7, 9),
    (2, 1, 1, 1, 64, 64),
    (3, 2, 2, 1, 1, 4097),
    (1, 1, 1, 4, 128, 128),
    (256, 26, 64, 4, 64, 64),
]
# (x_t dtype, atol, rtol): one rounding of the float32 result to the dtype; float32 allows an FMA's last bits.
DTYPES = [(torch.float32, 1e-6, 1e-6), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 1.6e-2, 1.6e-2)]


@pytest.fixture(autouse=True)
def _compiled_not_interpreted():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 is set: these tests must run the compiled kernels; unset it")
    pytest.importorskip("triton")


def _noisy_inputs(q, i, n, c, h, w, in_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(i, c, h, w, generator=g).to(in_dtype)
    eps = torch.randn(n, c, h, w, generator=g).to(in_dtype)
    img_idx = torch.randint(0, i, (q,), generator=g)
    noise_idx = torch.randint(0, n, (q,), generator=g)
    if q > 2:  # repeated indices on purpose
        img_idx[1] = img_idx[0]
        noise_idx[2] = noise_idx[0]
    a = torch.rand(q, generator=g)
    b = (1 - a * a).sqrt()
    return x0, eps, img_idx, noise_idx, a, b


def _exact_noisy(x0, eps, img_idx, noise_idx, a, b, dtype):
    """float64 on the CPU, rounded once to ``dtype``."""
    v = (1,) * (x0.dim() - 1)
    return (
        a.double().view(-1, *v) * x0[img_idx.long()].double() + b.double().view(-1, *v) * eps[noise_idx.long()].double()
    ).to(dtype)


def _exact_errors(hat, eps, noise_idx, kind="l2", weight=None):
    d = hat.double().reshape(len(hat), -1) - eps[noise_idx.long()].double().reshape(len(hat), -1)
    if kind == "l2":
        v = d * d
    elif kind == "l1":
        v = d.abs()
    else:
        ad = d.abs()
        v = torch.where(
            ad < reference.HUBER_DELTA, 0.5 * d * d, reference.HUBER_DELTA * (ad - 0.5 * reference.HUBER_DELTA)
        )
    err = v.mean(dim=1)
    return err * weight.double() if weight is not None else err


def _cuda(*ts):
    return [t.to(DEV) for t in ts]


# (x_t dtype, atol, rtol, layout): "engine" takes float32 x0 and eps (what the runner passes), "same-dtype" all in the
# dtype
LAYOUTS = [(*d, "engine") for d in DTYPES] + [(*d, "same-dtype") for d in DTYPES[1:]]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "dtype, atol, rtol, layout", LAYOUTS, ids=["fp32", "fp16", "bf16", "fp16-in-fp16", "bf16-in-bf16"]
)
def test_make_noisy_compiled(shape, dtype, atol, rtol, layout):
    in_dtype = torch.float32 if layout == "engine" else dtype
    x0, eps, img_idx, noise_idx, a, b = _noisy_inputs(*shape, in_dtype, seed=sum(shape))
    from diffcls_fast.kernels.fused_noise import make_noisy

    out = torch.full(
        (shape[0], *shape[3:]), float("nan"), dtype=dtype, device=DEV
    )  # poisoned: every element must be written
    got = make_noisy(*_cuda(x0, eps, img_idx, noise_idx, a, b), out=out)
    torch.cuda.synchronize()
    assert got.data_ptr() == out.data_ptr()
    assert_verbose_allclose(got, _exact_noisy(x0, eps, img_idx, noise_idx, a, b, dtype), rtol=rtol, atol=atol)
    # and the package's torch reference on the same device
    want = reference.make_noisy(*_cuda(x0, eps, img_idx, noise_idx, a, b), out=torch.empty_like(out))
    assert_verbose_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "kind, weighted",
    [("l2", False), ("l1", False), ("huber", False), ("l2", True)],
    ids=["l2", "l1", "huber", "l2-weighted"],
)
def test_query_errors_compiled(shape, dtype, kind, weighted):
    q, _, n, c, h, w = shape
    g = torch.Generator().manual_seed(q * 7 + n + h)
    eps = torch.randn(n, c, h, w, generator=g)  # float32, as the runner's noise rows
    hat = (torch.randn(q, c, h, w, generator=g) * 1.5).to(dtype)
    noise_idx = torch.randint(0, n, (q,), generator=g)
    weight = torch.rand(q, generator=g) * 3 if weighted else None
    from diffcls_fast.kernels.fused_errors import query_errors

    got = query_errors(*_cuda(hat, eps, noise_idx), kind=kind, weight=weight.to(DEV) if weighted else None)
    assert got.dtype == torch.float32 and got.shape == (q,) and got.is_cuda
    # float32 accumulation of the same rounded inputs against float64: only summation order differs.
    assert_verbose_allclose(got, _exact_errors(hat, eps, noise_idx, kind, weight), rtol=3e-5, atol=1e-7)


def test_query_errors_deterministic_and_batch_independent():
    """Bitwise repeatable (no atomics); a row's error does not depend on how many rows share the launch
    (the split of each row changes with Q, so only summation order may differ)."""
    from diffcls_fast.kernels.fused_errors import query_errors

    g = torch.Generator().manual_seed(5)
    eps = torch.randn(64, 4, 64, 64, generator=g).to(DEV)
    hat = torch.randn(256, 4, 64, 64, generator=g).to(DEV, torch.float16)
    idx = torch.randint(0, 64, (256,), generator=g).to(DEV)
    full = query_errors(hat, eps, idx)
    assert torch.equal(full, query_errors(hat, eps, idx))
    for q in (1, 3, 64):
        assert_verbose_allclose(query_errors(hat[:q], eps, idx[:q]), full[:q], rtol=2e-6, atol=1e-8)


def test_strided_row_views_need_no_copy_and_leave_gaps_alone():
    """Every other row of larger buffers (row stride > row size): read and written in place."""
    from diffcls_fast.kernels.fused_errors import query_errors
    from diffcls_fast.kernels.fused_noise import make_noisy

    g = torch.Generator().manual_seed(2)
    x0_buf = torch.randn(8, 3, 9, 9, generator=g).to(DEV)
    eps_buf = torch.randn(9, 3, 9, 9, generator=g).to(DEV)
    x0, eps = x0_buf[::2], eps_buf[1::3]
    img_idx = torch.tensor([3, 0, 2, 1, 3], device=DEV)
    noise_idx = torch.tensor([0, 2, 1, 1, 0], device=DEV)
    a = torch.rand(5, generator=g).to(DEV)
    b = (1 - a * a).sqrt()
    out_buf = torch.full((10, 3, 9, 9), float("nan"), dtype=torch.float16, device=DEV)
    make_noisy(x0, eps, img_idx, noise_idx, a, b, out=out_buf[::2])
    want = _exact_noisy(x0.cpu(), eps.cpu(), img_idx.cpu(), noise_idx.cpu(), a.cpu(), b.cpu(), torch.float16)
    assert_verbose_allclose(out_buf[::2], want, rtol=2e-3, atol=2e-3)
    assert torch.isnan(out_buf[1::2]).all()  # the rows between were not touched
    got = query_errors(out_buf[::2], eps, noise_idx)
    assert_verbose_allclose(got, _exact_errors(out_buf[::2].cpu(), eps.cpu(), noise_idx.cpu()), rtol=3e-5, atol=1e-7)


def test_dispatch_runs_triton_on_cuda(monkeypatch):
    from diffcls_fast import kernels

    monkeypatch.delenv("DIFFCLS_KERNELS", raising=False)
    x0, eps, img_idx, noise_idx, a, b = _cuda(*_noisy_inputs(4, 2, 2, 1, 4, 4, torch.float32, seed=0))
    kernels.query_errors(kernels.make_noisy(x0, eps, img_idx, noise_idx, a, b), eps, noise_idx)
    assert kernels.active_backend() == "triton"


def test_nan_propagates_compiled():
    from diffcls_fast.kernels.fused_errors import query_errors
    from diffcls_fast.kernels.fused_noise import make_noisy

    x0, eps, img_idx, noise_idx, a, b = _noisy_inputs(6, 2, 3, 2, 5, 5, torch.float32, seed=3)
    x0[1, 0, 2, 2] = float("nan")
    got = make_noisy(*_cuda(x0, eps, img_idx, noise_idx, a, b))
    assert torch.equal(
        torch.isnan(got).cpu(), torch.isnan(_exact_noisy(x0, eps, img_idx, noise_idx, a, b, torch.float32))
    )
    hat = torch.randn(6, 2, 5, 5)
    hat[4, 1, 0, 0] = float("nan")
    e = query_errors(*_cuda(hat, eps, noise_idx)).cpu()
    assert torch.isnan(e[4]) and not torch.isnan(e[torch.arange(6) != 4]).any()


LARGE_Q = (1 << 31) // (4 * 64 * 64) + 3  # SD latent rows: Q * E just past 2^31 elements (4.3 GB of fp16)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_offsets_beyond_2_pow_31_elements(index_dtype):
    """A real [Q, 4, 64, 64] fp16 x_t with Q * E > 2^31: the kernels' row offsets (int64) must not wrap.

    Writes every row (poisoned first), checks rows at both ends against float64, then reduces the
    same buffer with query_errors. Needs ~13 GiB free on the device; skipped with the reason otherwise.
    """
    free, _ = torch.cuda.mem_get_info()
    need = 3 * LARGE_Q * 4 * 64 * 64 * 2 + (1 << 30)  # x_t, isnan's bool map, working room
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the device, {free / 2**30:.1f} GiB is")
    from diffcls_fast.kernels.fused_errors import query_errors
    from diffcls_fast.kernels.fused_noise import make_noisy

    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(3, 4, 64, 64, generator=g)
    eps = torch.randn(5, 4, 64, 64, generator=g)
    img_idx = torch.randint(0, 3, (LARGE_Q,), generator=g).to(index_dtype)
    noise_idx = torch.randint(0, 5, (LARGE_Q,), generator=g).to(index_dtype)
    a = torch.rand(LARGE_Q, generator=g)
    b = (1 - a * a).sqrt()
    out = torch.full((LARGE_Q, 4, 64, 64), float("nan"), dtype=torch.float16, device=DEV)
    make_noisy(*_cuda(x0, eps, img_idx, noise_idx, a, b), out=out)
    assert not torch.isnan(out).any().item(), "some rows were not written"
    rows = torch.tensor([0, 1, LARGE_Q // 2, LARGE_Q - 3, LARGE_Q - 2, LARGE_Q - 1])
    want = _exact_noisy(x0, eps, img_idx[rows], noise_idx[rows], a[rows], b[rows], torch.float16)
    assert_verbose_allclose(out[rows.to(DEV)], want, rtol=2e-3, atol=2e-3)
    err = query_errors(out, eps.to(DEV), noise_idx.to(DEV))
    assert_verbose_allclose(
        err[rows.to(DEV)], _exact_errors(out[rows.to(DEV)].cpu(), eps, noise_idx[rows]), rtol=3e-5, atol=1e-7
    )
