"""make_noisy writes rows that start past 2^31 elements (CPU: Triton's interpreter, a sparse file).

``test_kernels.py`` checks reads past 2^31 this way; this is the store side (``out_ptr + q * out_stride``),
which ``test_kernels_cuda.py`` checks on a GPU with a real 4.3 GB buffer.
"""

import os

import pytest
import torch

from diffcls_fast.kernels import reference

from ..utils import assert_verbose_allclose

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip(
        "the sparse-file trick is for the CPU interpreter; tests/kernels/test_kernels_cuda.py covers the GPU",
        allow_module_level=True,
    )
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton on the CPU needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)

from diffcls_fast.kernels.fused_noise import make_noisy  # noqa: E402


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_make_noisy_writes_rows_past_2_pow_31(tmp_path, index_dtype):
    stride, shape = 1 << 31, (3, 5, 7)
    e = 3 * 5 * 7
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        f.truncate((2 * stride + e) * 2)  # fp16, sparse: 8 GiB of address space, a few pages touched
    storage = torch.from_file(str(path), shared=True, size=2 * stride + e, dtype=torch.float16)
    out = storage.as_strided((3, *shape), (stride, 35, 7, 1))  # rows 1 and 2 start at 2^31 and 2^32 elements
    out.fill_(float("nan"))
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, *shape, generator=g)
    eps = torch.randn(2, *shape, generator=g)
    img_idx = torch.tensor([1, 0, 1], dtype=index_dtype)
    noise_idx = torch.tensor([0, 1, 1], dtype=index_dtype)
    a = torch.tensor([0.9, 0.5, 0.1])
    b = (1 - a * a).sqrt()
    got = make_noisy(x0, eps, img_idx, noise_idx, a, b, out=out)
    assert got.data_ptr() == out.data_ptr()
    want = reference.make_noisy(
        x0, eps, img_idx.long(), noise_idx.long(), a, b, out=torch.empty(3, *shape, dtype=torch.float16)
    )
    assert_verbose_allclose(out.clone(), want, rtol=2e-3, atol=2e-3)
    # nothing written between the rows (the element right after row 0 and right before row 2)
    flat = storage.as_strided((2 * stride + e,), (1,))
    assert flat[e].item() == 0 and flat[2 * stride - 1].item() == 0
