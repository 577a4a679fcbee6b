"""Export and backends: ONNX export, ONNX Runtime, TensorRT, torch.compile / CUDA graphs."""

from .backends import BACKENDS, apply_backend

__all__ = ["BACKENDS", "apply_backend"]
