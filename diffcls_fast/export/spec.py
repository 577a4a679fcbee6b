"""Export specs: what the exported denoiser graph looks like, per model family.

Every family exports the raw network as ``out = net(sample, timestep, cond)``
with a per-sample ``timestep`` of shape [B] and a dynamic batch axis on every
input and output. The eps extraction (learned-sigma slicing, v -> eps) stays in
Python, shared by all backends.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models.bundle import ModelBundle

OPSET = 18


class RawNetwork(torch.nn.Module):
    """The traced module: positional (sample, timestep, cond) -> raw network output."""

    def __init__(self, net: torch.nn.Module, class_cond: bool):
        super().__init__()
        self.net = net
        self.class_cond = class_cond

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.class_cond:
            return self.net(sample, timestep, class_labels=cond).sample
        return self.net(sample, timestep, encoder_hidden_states=cond).sample


# Families whose network the TorchScript ONNX exporter (torch.onnx.export, dynamo=False, opset 18) cannot turn
# into a graph ONNX Runtime loads, and why; checked before a long trace.
ONNX_REFUSED = {
    "pixart": (
        "diffusers' PixArt transformer squeezes a dimension that is 1 only at batch 1 (hidden_states.squeeze(1));"
        " with a dynamic batch the exporter emits an If node whose shape inference ONNX Runtime rejects"
    ),
    "flux": "diffusers' Flux transformer uses torch's rms_norm, which the ONNX exporter has no opset-18 symbol for",
}


def check_onnx_exportable(bundle: ModelBundle) -> None:
    why = ONNX_REFUSED.get(bundle.family)
    if why:
        raise UserError(f"{bundle.name}: {bundle.family} models do not export to ONNX: {why}; use --backend torch")


def export_module(bundle: ModelBundle) -> torch.nn.Module:
    """The module to trace: the family's own (SDXL, SD3, PixArt, Flux: ``ModelBundle.raw_module``), else the
    network behind :class:`RawNetwork`."""
    if bundle.raw_module is not None:
        return bundle.raw_module.eval()
    return RawNetwork(bundle.network, bundle.cond_kind == "class").eval()


def raw_out_channels(bundle: ModelBundle) -> int:
    """Channels of the raw output (eps and a learned sigma count twice); Flux's out_channels config is None."""
    if bundle.raw_module is not None:
        return int(bundle.raw_module.out_channels)
    return int(getattr(getattr(bundle.network, "config", None), "out_channels", None) or bundle.latent_shape[0])


@dataclass(frozen=True)
class ExportSpec:
    family: str
    latent_shape: tuple[int, int, int]
    cond_shape: tuple[int, ...]  # one row; () for class ids
    cond_dtype: str  # "float" or "int64"
    input_names: tuple[str, ...] = ("sample", "timestep", "cond")
    output_names: tuple[str, ...] = ("out",)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in self.input_names + self.output_names}

    def sample_input(
        self, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0
    ) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, *self.latent_shape, generator=g).to(device, dtype)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        if self.cond_dtype == "int64":
            c = torch.randint(0, 1000, (batch,), generator=g).to(device)
        else:
            c = torch.randn(batch, *self.cond_shape, generator=g).to(device, dtype)
        return x, t, c

    def input_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"sample": (batch, *self.latent_shape), "timestep": (batch,), "cond": (batch, *self.cond_shape)}

    def profiles(
        self, batch_sizes: list[int]
    ) -> list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]:
        """One TensorRT optimization profile per bucket size: min = opt = max (static shapes, best kernels)."""
        return [{n: (s, s, s) for n, s in self.input_shapes(b).items()} for b in sorted(set(batch_sizes))]


def spec_for(bundle: ModelBundle) -> ExportSpec:
    return ExportSpec(
        family=bundle.family,
        latent_shape=tuple(bundle.latent_shape),
        cond_shape=tuple(bundle.cond_shape),
        cond_dtype="int64" if bundle.cond_kind == "class" else "float",
    )


def artifact_key(bundle: ModelBundle, spec: ExportSpec, extra: dict | None = None) -> str:
    """A cache key covering the weights, the graph's shapes, the dtype and the tool versions."""
    blob = {
        "fingerprint": bundle.fingerprint,
        "spec": [spec.family, spec.latent_shape, spec.cond_shape, spec.cond_dtype],
        "dtype": str(bundle.dtype),
        "torch": torch.__version__,
        "opset": OPSET,
        **(extra or {}),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]
