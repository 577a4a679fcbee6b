"""The engine: noise bank, policies, scheduler, runner, embedding cache and the classifier API."""

from .classifier import DiffusionClassifier
from .prompts import ClassSpec, parse_class_list, read_prompts_csv
from .results import ClassificationResult, RunStats

__all__ = ["ClassSpec", "ClassificationResult", "DiffusionClassifier", "RunStats", "parse_class_list", "read_prompts_csv"]
