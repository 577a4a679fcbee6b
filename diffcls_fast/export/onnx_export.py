"""Export the denoiser to ONNX, validate it, and compare it with torch."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BackendUnavailable, UserError
from ..models.bundle import ModelBundle
from .spec import OPSET, ExportSpec, artifact_key, check_onnx_exportable, export_module, spec_for


@dataclass
class OnnxArtifact:
    path: Path
    cached: bool  # True: a valid earlier export was reused
    max_abs_error: float | None  # ONNX Runtime vs torch on random inputs (None if not compared)
    seconds: float
    spec: ExportSpec


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("onnx is not installed; pip install 'diffcls-fast[onnx]'") from None
    return onnx


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed; pip install 'diffcls-fast[onnx]'") from None
    return onnxruntime


def export_onnx(bundle: ModelBundle, out_dir: str | Path, compare_batch: int = 3, force: bool = False) -> OnnxArtifact:
    """Export ``bundle``'s network to ``out_dir/<name>-<key>.onnx`` (skipped when a valid cached one exists)."""
    onnx = require_onnx()
    if bundle.network is None:
        raise UserError(f"{bundle.name}: this model has no exportable torch network")
    check_onnx_exportable(bundle)
    spec = spec_for(bundle)
    out_dir = writable_dir(out_dir)
    key = artifact_key(bundle, spec)
    path = out_dir / f"{bundle.name}-{key}.onnx"
    meta_path = path.with_suffix(".json")
    t0 = time.perf_counter()
    if not force:
        meta = _valid_cached(onnx, path, meta_path)
        if meta is not None:
            return OnnxArtifact(path, True, meta.get("max_abs_error"), time.perf_counter() - t0, spec)
    module = export_module(bundle)
    args = spec.sample_input(2, bundle.device, bundle.dtype)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes are expected
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)
    err = compare_with_torch(bundle, path, spec, compare_batch) if compare_batch else None
    meta_path.write_text(
        json.dumps(
            {
                "key": key,
                "model": bundle.name,
                "fingerprint": bundle.fingerprint,
                "opset": OPSET,
                "max_abs_error": err,
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    return OnnxArtifact(path, False, err, time.perf_counter() - t0, spec)


def writable_dir(path: str | Path) -> Path:
    """``path`` as a folder this process can write into (created if missing), or a UserError saying why not."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(
            f"{p}: exists and is not a folder; export artifacts need a folder (set --out for export, --cache-dir or"
            " DIFFCLS_CACHE_DIR for --backend)"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{p}: cannot create the export folder ({e.strerror or e}); set --out for export, --cache-dir or"
            " DIFFCLS_CACHE_DIR for --backend"
        ) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(
            f"{p}: the export folder is not writable; set --out for export, --cache-dir or DIFFCLS_CACHE_DIR for"
            " --backend"
        )
    return p


def _valid_cached(onnx, path: Path, meta_path: Path) -> dict | None:
    """The metadata of a complete, checker-valid earlier export, or None (then it is exported again)."""
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        onnx.checker.check_model(str(path))
        return json.loads(meta_path.read_text())
    except (onnx.checker.ValidationError, json.JSONDecodeError, OSError):
        return None


def compare_with_torch(bundle: ModelBundle, path: Path, spec: ExportSpec, batch: int = 3) -> float:
    """Max |ONNX Runtime - torch| of the raw network output on random inputs (CPU provider)."""
    ort = require_onnxruntime()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, t, c = spec.sample_input(batch, torch.device("cpu"), torch.float32, seed=123)
    feeds = {"sample": x.numpy(), "timestep": t.numpy(), "cond": c.numpy()}
    got = torch.from_numpy(sess.run(None, feeds)[0])
    with torch.no_grad():
        dev, dt = bundle.device, bundle.dtype
        args = (x.to(dev, dt), t.to(dev), c.to(dev) if spec.cond_dtype == "int64" else c.to(dev, dt))
        want = export_module(bundle)(*args).float().cpu()
    return float((got - want).abs().max())
