"""diffcls-fast: a fast engine that turns conditional diffusion models into image classifiers.

The public names are imported on first use (PEP 562 module ``__getattr__``), so
``import diffcls_fast`` (and ``diffcls-fast --help``) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ClassSpec": ".engine.prompts",
    "ClassificationResult": ".engine.results",
    "DiffusionClassifier": ".engine.classifier",
    "DiffclsWarning": ".errors",
    "UserError": ".errors",
    "ModelBundle": ".models.bundle",
    "load_model": ".models.loader",
}

__all__ = [
    "ClassSpec",
    "ClassificationResult",
    "DiffusionClassifier",
    "DiffclsWarning",
    "ModelBundle",
    "UserError",
    "__version__",
    "load_model",
]


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'diffcls_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
