"""Weights for a native module, straight from the component's one safetensors file, by parameter name."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn


def single_weights_file(component: Path, name: str) -> Path | None:
    """``component/name`` when it is the folder's only safetensors file (no shards, no variants), else None."""
    files = sorted(p.name for p in component.glob("*.safetensors"))
    return component / name if files == [name] else None


def load_into(module: nn.Module, path: Path, dtype: torch.dtype, strip_prefix: str = "") -> str | None:
    """Fill ``module`` with the tensors of ``path``, cast to ``dtype``.

    The file must hold exactly the module's tensors at the module's shapes (``strip_prefix``, when every name
    has it, is removed first). Returns None on success, else one line saying what differs: the caller then
    loads the library's class, whose loader has its own rules for missing and extra tensors and says so.
    """
    try:
        state = load_file(path)
    except (OSError, SafetensorError) as e:  # truncated or not safetensors: the library path reports it
        return f"{path.name}: cannot read ({e})"
    if strip_prefix and state and all(k.startswith(strip_prefix) for k in state):
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    expected = module.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return f"{path.name}: tensor names differ (missing {missing[:2]}, extra {extra[:2]})"
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            return f"{path.name}: {k} has shape {tuple(v.shape)}, the config says {tuple(expected[k].shape)}"
        if not v.is_floating_point():
            return f"{path.name}: {k} is {v.dtype}, not a float tensor"
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return None
