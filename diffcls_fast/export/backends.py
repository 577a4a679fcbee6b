"""Denoiser backends behind one interface, chosen with ``--backend``.

``apply_backend(bundle, name)`` returns a copy of the bundle whose ``denoise``
runs on that backend and whose ``backend`` field names what actually runs.
An unavailable backend raises :class:`BackendUnavailable` with one line saying
how to get it; there is no silent fallback.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..engine.cache import default_cache_dir
from ..errors import BackendUnavailable, UserError
from ..models.bundle import ModelBundle
from ..models.common import make_unet_denoiser
from .spec import raw_out_channels

BACKENDS = ("torch", "compile", "onnx", "tensorrt", "aoti")


def artifact_dir(cache_dir: str | Path | None) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "export"


def apply_backend(
    bundle: ModelBundle,
    name: str = "torch",
    *,
    batch_sizes: list[int] | None = None,
    cache_dir: str | Path | None = None,
    xformers: bool = False,
) -> ModelBundle:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if xformers:
        enable_xformers(bundle)
    if name == "torch":
        return dataclasses.replace(bundle, backend="torch+xformers" if xformers else "torch")
    if bundle.network is None:
        raise UserError(f"{bundle.name}: no torch network to run on backend {name}")
    class_cond = bundle.cond_kind == "class"
    if name == "compile":
        raw, label = compiled_raw(bundle, class_cond)
    elif name == "onnx":
        raw, label = onnxruntime_raw(bundle, artifact_dir(cache_dir))
    elif name == "aoti":
        raw, label = aoti_raw(bundle, artifact_dir(cache_dir), batch_sizes or [8, 16, 32, 64, 128, 256])
    else:
        from .tensorrt_backend import tensorrt_raw

        raw, label = tensorrt_raw(bundle, artifact_dir(cache_dir), batch_sizes or [8, 16, 32, 64, 128, 256])
    denoise = make_unet_denoiser(raw, bundle.alphas_cumprod, bundle.prediction_type, bundle.device)
    return dataclasses.replace(bundle, denoise=denoise, backend=label + ("+xformers" if xformers else ""))


def enable_xformers(bundle: ModelBundle) -> None:
    try:
        import xformers  # noqa: F401
    except ImportError:
        raise BackendUnavailable("xformers is not installed; pip install 'diffcls-fast[xformers]'") from None
    if bundle.device.type != "cuda":
        raise BackendUnavailable("xformers attention needs a CUDA device")
    bundle.network.enable_xformers_memory_efficient_attention()


def compiled_raw(bundle: ModelBundle, class_cond: bool):
    """torch.compile; on CUDA mode="reduce-overhead" captures one CUDA graph per bucket size."""
    from ..models.common import raw_network_call

    mode = "reduce-overhead" if bundle.device.type == "cuda" else "default"
    # dynamic=False: each bucket size is its own static graph (and CUDA graph); the bucket set is small.
    if bundle.raw_module is not None:  # a family whose call is its own module (SDXL, SD3, PixArt, Flux)
        call = torch.compile(bundle.raw_module, mode=mode, dynamic=False, fullgraph=False)
    else:
        compiled = torch.compile(bundle.network, mode=mode, dynamic=False, fullgraph=False)
        call = raw_network_call(compiled, class_cond)
    if bundle.device.type == "cuda":

        def raw(x_t, t, cond):
            torch.compiler.cudagraph_mark_step_begin()
            return call(x_t, t, cond).clone()  # the graph's output buffer is reused by the next replay

        return raw, f"compile[{mode}]"
    return call, f"compile[{mode}]"


def onnxruntime_raw(bundle: ModelBundle, art_dir: Path):
    from .onnx_export import export_onnx, require_onnxruntime

    ort = require_onnxruntime()
    art = export_onnx(bundle, art_dir)
    available = ort.get_available_providers()
    if bundle.device.type == "cuda":
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendUnavailable(
                "onnxruntime has no CUDA provider here; pip install onnxruntime-gpu, or use --device cpu"
            )
        providers = wanted + ["CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("DIFFCLS_ORT_THREADS", "0"))
    sess = ort.InferenceSession(str(art.path), sess_options=so, providers=providers)
    used = sess.get_providers()[0].removesuffix("ExecutionProvider").lower()
    float_cond = bundle.cond_kind != "class"
    np_dtype = {torch.float32: "float32", torch.float16: "float16"}.get(bundle.dtype)
    if np_dtype is None:
        raise BackendUnavailable(f"the onnx backend runs fp32 or fp16, not {bundle.dtype}")

    if bundle.device.type == "cuda":
        out_ch = raw_out_channels(bundle)

        def raw(x_t, t, cond):
            # IO binding on device pointers: no host copies.
            io = sess.io_binding()
            out = torch.empty((x_t.shape[0], out_ch, *x_t.shape[2:]), dtype=x_t.dtype, device=x_t.device)
            for name, tens in (
                ("sample", x_t.contiguous()),
                ("timestep", t.contiguous()),
                ("cond", cond.contiguous()),
                ("out", out),
            ):
                bind = io.bind_output if name == "out" else io.bind_input
                bind(name, "cuda", tens.device.index or 0, _ort_type(tens), list(tens.shape), tens.data_ptr())
            sess.run_with_iobinding(io)
            return out

        return raw, f"onnx[{used}]"

    def raw(x_t, t, cond):
        feeds = {
            "sample": x_t.detach().cpu().numpy(),
            "timestep": t.cpu().numpy(),
            "cond": cond.detach().cpu().numpy() if float_cond else cond.cpu().numpy(),
        }
        return torch.from_numpy(sess.run(None, feeds)[0]).to(x_t.device)

    return raw, f"onnx[{used}]"


def _ort_type(t: torch.Tensor):
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}[t.dtype]


def aoti_raw(bundle: ModelBundle, art_dir: Path, batch_sizes: list[int]):
    """AOTInductor packages (compiled once per weights and batch range into the cache), loaded in-process."""
    from .aoti_export import cached_packages

    if bundle.device.type != "cpu":
        raise BackendUnavailable(
            "the aoti backend is built and tested for the CPU here; use --device cpu (or --backend compile on CUDA)"
        )
    if bundle.dtype != torch.float32:
        raise BackendUnavailable(f"the aoti backend runs float32, not {str(bundle.dtype).removeprefix('torch.')}")
    runner, _ = cached_packages(bundle, art_dir, batch_sizes)
    return runner, "aoti"
