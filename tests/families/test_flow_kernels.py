"""The fused Triton noising kernel with flow-matching coefficients (a = 1 - σ, b = σ) against the plain formula
(CPU: under TRITON_INTERPRET=1, as tests/kernels does)."""

import os

import pytest
import torch

from diffcls_fast.models.flow import flow_sigmas

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from diffcls_fast.kernels.dispatch import interpreter_problem  # noqa: E402
from diffcls_fast.kernels.fused_errors import query_errors as tri_query_errors  # noqa: E402
from diffcls_fast.kernels.fused_noise import make_noisy as tri_make_noisy  # noqa: E402

if DEVICE == "cpu" and interpreter_problem():
    pytest.skip(interpreter_problem(), allow_module_level=True)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_fused_flow_noising_and_velocity_error(dtype, tol):
    g = torch.Generator().manual_seed(0)
    sig = flow_sigmas({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    x0 = torch.randn(3, 4, 6, 5, generator=g).to(DEVICE, dtype)
    eps = torch.randn(4, 4, 6, 5, generator=g).to(DEVICE, dtype)
    img = torch.tensor([0, 2, 1, 2, 0], device=DEVICE)
    noise = torch.tensor([3, 0, 1, 2, 3], device=DEVICE)
    s = sig[torch.tensor([0, 999, 500, 10, 250])].float().to(DEVICE)
    want = (1 - s).view(-1, 1, 1, 1) * x0[img].float() + s.view(-1, 1, 1, 1) * eps[noise].float()
    got = tri_make_noisy(x0, eps, img, noise, 1 - s, s)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    # the velocity target per noise row is eps - x0 of its image (here: rows 0..3 paired with images 0, 1, 2, 0)
    pair_img = torch.tensor([0, 1, 2, 0], device=DEVICE)
    target = eps - x0[pair_img]
    v_hat = torch.randn(5, 4, 6, 5, generator=g).to(DEVICE, dtype)
    err = tri_query_errors(v_hat, target, noise, kind="l2")
    plain = ((v_hat.float() - target[noise].float()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(err, plain, atol=tol, rtol=tol)
