"""The engine on CUDA against the engine on the CPU, and the GPU backends against eager (``pytest -m cuda``).

The bundled digits model, the held-out split, the exhaustive policy (every class
scored on the same samples, so every image has a full row of mean errors to
compare). Labels must agree wherever the CPU's decision is clear, and mean errors
within the dtype's tolerance (``bench.agreement.DTYPE_RTOL``); a near-tie may flip
and is reported. Skipped without CUDA; ``python -m bench.gpu`` runs these.
"""

from __future__ import annotations

import pytest
import torch

from bench.agreement import DTYPE_RTOL, compare_results
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data.digits import load_split

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (engine on CUDA vs CPU; python -m bench.gpu runs these)",
    ),
]
N_GRID = 5  # 50 evaluations per image
SUBSET = 64  # images of the quick checks
_CPU: dict[int, list] = {}


def _images(n: int | None = None):
    pil, _, _ = load_split("heldout")
    return pil if n is None else pil[:n]


def cpu_reference(n: int | None = None) -> list:
    """The fp32 CPU run on the first n held-out images (computed once per size per session)."""
    key = -1 if n is None else n
    if key not in _CPU:
        m = load_model("digits", device="cpu", dtype="fp32")
        _CPU[key] = DiffusionClassifier(m, "exhaustive", n_grid=N_GRID, use_cache=False).classify(_images(n))
    return _CPU[key]


def _classify(model, images, **kw):
    clf = DiffusionClassifier(model, "exhaustive", n_grid=N_GRID, use_cache=False, **kw)
    return clf.classify(images), clf.last_stats


class _NoTF32:
    """fp32 on the GPU without TF32 (cuDNN uses it for convolutions by default): summation order differs, nothing
    else."""

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def test_engine_cuda_fp16_matches_cpu_subset():
    """The default on CUDA (fp16, Triton kernels) on the first 64 held-out images."""
    model = load_model("digits", device="cuda")
    assert model.dtype == torch.float16
    res, st = _classify(model, _images(SUBSET))
    assert st.kernels == "triton"
    ag = compare_results(cpu_reference(SUBSET), res, rtol=DTYPE_RTOL["float16"])
    assert ag.ok, ag.describe()


def test_engine_cuda_overlap_matches_sequential():
    """The overlap (on by default for CUDA: batch k+1 prepared while batch k runs) changes no result, for a
    pruning policy too, and every batch ran on the device worker."""
    model = load_model("digits", device="cuda")
    images = _images(32)
    for policy, kw in (("exhaustive", dict(n_grid=N_GRID)), ("ttest", dict(min_scores=5, max_scores=60))):
        runs = {}
        for overlap in (False, True):
            clf = DiffusionClassifier(model, policy, use_cache=False, batch_size=64, overlap=overlap, **kw)
            assert clf.config.overlap is overlap
            runs[overlap] = clf.classify(images)
        ag = compare_results(runs[False], runs[True], rtol=DTYPE_RTOL["float16"])
        assert ag.ok and ag.same_labels == len(images), ag.describe()
        assert [r.evaluations for r in runs[False]] == [r.evaluations for r in runs[True]]
    assert DiffusionClassifier(model, "halving", use_cache=False).config.overlap is True  # auto: on for CUDA


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_engine_cuda_matches_cpu_heldout(dtype):
    """Every held-out image, each dtype (fp32 with TF32 off: the strict check)."""
    model = load_model("digits", device="cuda", dtype=dtype)
    name = str(model.dtype).removeprefix("torch.")
    if dtype == "fp32":
        with _NoTF32():
            res, st = _classify(model, _images())
    else:
        res, st = _classify(model, _images())
    assert st.kernels == "triton" and st.dtype == name
    ag = compare_results(cpu_reference(), res, rtol=DTYPE_RTOL[name])
    print(f"{dtype}: {ag.describe()}")
    assert ag.ok, ag.describe()


def test_engine_cuda_batch_size_independent():
    """An image's result does not depend on the batch size on CUDA either (beyond fp16 tolerance)."""
    model = load_model("digits", device="cuda")
    images = _images(32)
    big, _ = _classify(model, images, batch_size=256)
    small, st = _classify(model, images, batch_size=16)
    assert max(st.bucket_counts) <= 16
    ag = compare_results(big, small, rtol=DTYPE_RTOL["float16"])
    assert ag.ok and ag.same_labels == len(images), ag.describe()


@pytest.mark.slow
def test_compile_backend_matches_eager():
    """--backend compile on CUDA (mode="reduce-overhead": a CUDA graph per bucket size) against eager.

    Two bucket sizes, so two graphs are captured and replayed with padding rows."""
    from diffcls_fast.export import apply_backend

    eager = load_model("digits", device="cuda")
    images = _images(48)
    want, _ = _classify(eager, images, buckets=[16, 64])
    compiled = apply_backend(eager, "compile")
    assert compiled.backend == "compile[reduce-overhead]"
    got, st = _classify(compiled, images, buckets=[16, 64])
    assert st.backend == "compile[reduce-overhead]" and st.kernels == "triton"
    again, _ = _classify(
        compiled, images, buckets=[16, 64]
    )  # replays only: the graphs' static buffers must not leak between calls
    for run in (got, again):
        ag = compare_results(want, run, rtol=DTYPE_RTOL["float16"])
        assert ag.ok, ag.describe()


def test_xformers_matches_sdpa():
    xformers = pytest.importorskip(
        "xformers", reason="xformers is not installed (bench.gpu carries its wheel: scripts/fetch_gpu_wheels.py)"
    )
    from diffcls_fast.export import apply_backend

    images = _images(SUBSET)
    sdpa, _ = _classify(load_model("digits", device="cuda"), images)
    try:  # a fresh model: xformers is switched on in place
        xf_model = apply_backend(load_model("digits", device="cuda"), "torch", xformers=True)
    except Exception as e:  # diffusers runs a test op and re-raises whatever xformers raised
        pytest.skip(
            f"xformers {xformers.__version__} imports but cannot run here ({type(e).__name__}:"
            f" {str(e).splitlines()[0] if str(e) else ''})"
        )
    assert xf_model.backend == "torch+xformers"
    xf, _ = _classify(xf_model, images)
    ag = compare_results(sdpa, xf, rtol=DTYPE_RTOL["float16"])
    assert ag.ok, ag.describe()
