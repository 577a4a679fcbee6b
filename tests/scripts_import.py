"""Import a file of scripts/ as a module for a test (scripts/ is not a package)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_module(name: str) -> Iterator:
    """Yield scripts/<name>.py imported, with scripts/ on sys.path only meanwhile (a pytest fixture body)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))
