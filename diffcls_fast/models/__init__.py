"""Model loading: local diffusers folders, the bundled models, architecture presets."""

from .bundle import ModelBundle
from .loader import load_model

__all__ = ["ModelBundle", "load_model"]
