"""diffcls-fast: a fast engine that turns conditional diffusion models into image classifiers."""

__version__ = "0.1.0"

from .engine import ClassificationResult, ClassSpec, DiffusionClassifier  # noqa: E402
from .errors import DiffclsWarning, UserError  # noqa: E402
from .models import ModelBundle, load_model  # noqa: E402

__all__ = ["ClassSpec", "ClassificationResult", "DiffusionClassifier", "DiffclsWarning", "ModelBundle", "UserError", "__version__", "load_model"]
