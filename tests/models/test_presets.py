"""Architecture presets: the published denoisers with random weights, for timing only."""

import pytest

from diffcls_fast import UserError, load_model
from diffcls_fast.cli import main
from diffcls_fast.models.presets import PRESETS, preset_network


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_published_parameter_counts(name):
    net = preset_network(name, device="meta")
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - PRESETS[name]["params"]) / PRESETS[name]["params"] < 1e-3, n


def test_eval_refuses_presets(capsys):
    assert main(["eval", "--model", "preset:sd2-base"]) == 2
    assert "random weights (timing only)" in capsys.readouterr().err


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset"):
        load_model("preset:sd3", device="cpu")
