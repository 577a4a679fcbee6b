"""Without ray installed, the Ray parts fail with one line naming the extra (before anything loads)."""

import sys

import pytest

from diffcls_fast.cli import main
from diffcls_fast.errors import BackendUnavailable
from diffcls_fast.integrations.ray import classify_dataset, require_ray

MESSAGE = "ray is not installed; pip install 'diffcls-fast[ray]'"


def test_missing_ray_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is not installed
    with pytest.raises(BackendUnavailable, match=r"^ray is not installed; pip install 'diffcls-fast\[ray\]'$"):
        require_ray()
    with pytest.raises(BackendUnavailable, match="diffcls-fast\\[ray\\]"):
        classify_dataset(object(), "digits")
    assert main(["eval", "--ray", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"diffcls-fast: error: {MESSAGE}\n"
