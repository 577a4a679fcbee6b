"""What the models tests share: edited copies of model folders, and the checks run on them."""

import json
import shutil

import pytest

from diffcls_fast import UserError, load_model
from diffcls_fast.cli import main
from diffcls_fast.models.bundled import BUNDLED

from .tiny_folders import make_image_folder

FAST = ["--policy", "ttest", "--min-scores", "3", "--max-scores", "6", "--no-cache"]


def digits_copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], dst)
    return dst


def edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def refused(folder, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(e.value)
    return str(e.value)


def classify_and_eval(folder, classes, tmp_path, capsys, extra=()):
    """``classify`` and ``eval`` through the CLI on random images of ``classes``."""
    data = make_image_folder(tmp_path / "data", classes)
    img = next((data / classes[0]).iterdir())
    model = ["--model", str(folder)]
    assert main(["classify", str(img), *model, "--classes", ",".join(classes), "--json", *FAST, *extra]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] in classes and row["evaluations"] > 0
    assert main(["eval", *model, "--data", str(data), "--json", *FAST, *extra]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["images"] == 2 * len(classes) and 0.0 <= summary["accuracy"] <= 1.0
    return row, summary
