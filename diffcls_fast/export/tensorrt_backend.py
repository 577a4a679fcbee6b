"""TensorRT: build an engine from the exported ONNX (one optimization profile per
bucket size, fp16), cache it, and run it with one execution context per bucket.

NOT RUN HERE: TensorRT cannot be installed in this project's environment (the
PyPI ``tensorrt`` packages fetch the real wheel from NVIDIA's index, which is
unreachable). This path is written against TensorRT 10's documented Python API
(Builder, OnnxParser, IOptimizationProfile, ITimingCache, IRuntime,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3) and
kept small; what surrounds it (the ONNX it consumes, profiles, cache keys,
errors) is tested without TensorRT.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import BackendUnavailable
from ..models.bundle import ModelBundle
from .spec import ExportSpec, artifact_key, raw_out_channels, spec_for


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("tensorrt is not installed; pip install 'diffcls-fast[trt]'") from None
    return trt


def engine_key(bundle: ModelBundle, spec: ExportSpec, batch_sizes: list[int], trt_version: str) -> str:
    """Covers the weights (fingerprint), every profile shape, the precision and the TensorRT version."""
    return artifact_key(bundle, spec, {"profiles": sorted(set(batch_sizes)), "trt": trt_version, "precision": "fp16"})


def engine_paths(
    art_dir: Path, bundle: ModelBundle, spec: ExportSpec, batch_sizes: list[int], trt_version: str
) -> tuple[Path, Path]:
    key = engine_key(bundle, spec, batch_sizes, trt_version)
    return art_dir / f"{bundle.name}-{key}.plan", art_dir / f"timing-{trt_version}.cache"


def build_engine(
    onnx_path: Path, spec: ExportSpec, batch_sizes: list[int], plan_path: Path, timing_path: Path
) -> bytes:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for prof in spec.profiles(batch_sizes):
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            p.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(p)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp = plan_path.with_suffix(".tmp")
    tmp.write_bytes(memoryview(plan))
    os.replace(tmp, plan_path)
    return bytes(plan)


def tensorrt_raw(bundle: ModelBundle, art_dir: Path, batch_sizes: list[int]):
    trt = require_tensorrt()
    if bundle.device.type != "cuda":
        raise BackendUnavailable("the tensorrt backend needs a CUDA device")
    from .onnx_export import export_onnx

    spec = spec_for(bundle)
    art = export_onnx(bundle, art_dir)
    plan_path, timing_path = engine_paths(art_dir, bundle, spec, batch_sizes, trt.__version__)
    plan = (
        plan_path.read_bytes()
        if plan_path.is_file()
        else build_engine(art.path, spec, batch_sizes, plan_path, timing_path)
    )
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    buckets = sorted(set(batch_sizes))
    stream = torch.cuda.current_stream(bundle.device)
    contexts = {}
    for i, b in enumerate(buckets):  # one context per profile, shapes fixed once
        ctx = engine.create_execution_context()
        ctx.set_optimization_profile_async(i, stream.cuda_stream)
        for name, shape in spec.input_shapes(b).items():
            ctx.set_input_shape(name, shape)
        contexts[b] = ctx
    out_ch = raw_out_channels(bundle)

    def raw(x_t, t, cond):
        b = x_t.shape[0]
        ctx = contexts.get(b)
        if ctx is None:
            raise RuntimeError(f"batch {b} has no TensorRT profile (built for {buckets})")
        out = torch.empty((b, out_ch, *x_t.shape[2:]), dtype=x_t.dtype, device=x_t.device)
        ins = {"sample": x_t.contiguous(), "timestep": t.contiguous(), "cond": cond.contiguous()}
        for name, tens in ins.items():
            ctx.set_tensor_address(name, tens.data_ptr())
        ctx.set_tensor_address("out", out.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out

    return raw, "tensorrt[fp16]"
