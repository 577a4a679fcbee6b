"""The engine: noise bank, policies, scheduler, runner, the engine core, embedding cache and the classifier facade.

Names are imported on first use, so importing a light submodule (``engine.prompts``) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClassSpec": ".prompts",
    "parse_class_list": ".prompts",
    "read_prompts_csv": ".prompts",
    "ClassificationResult": ".results",
    "RunStats": ".results",
    "DiffusionClassifier": ".classifier",
    "Engine": ".core",
    "EngineConfig": ".options",
    "RequestOptions": ".options",
}

__all__ = [
    "ClassSpec",
    "ClassificationResult",
    "DiffusionClassifier",
    "Engine",
    "EngineConfig",
    "RequestOptions",
    "RunStats",
    "parse_class_list",
    "read_prompts_csv",
]


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'diffcls_fast.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
