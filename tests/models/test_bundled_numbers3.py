"""The bundled ``numbers3`` model: a class-conditional pixel UNet of 1,000 classes (three UCI digits side by side),
trained by scripts/train_bundled.py --model numbers3. It loads like any class-conditional diffusers folder and
classifies held-out triples (from held-out digits) with a one-sample first round of successive halving."""

import json

import numpy as np
import pytest

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data import numbers3
from diffcls_fast.models.bundled import BUNDLED

FOLDER = BUNDLED["numbers3"]
pytestmark = pytest.mark.skipif(
    not (FOLDER / "unet").is_dir(), reason="the numbers3 model is not exported yet (scripts/train_bundled.py)"
)


def test_ships_small_and_says_how_it_was_trained():
    size = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    meta = json.loads((FOLDER / "diffcls.json").read_text())
    assert meta["name"] == "numbers3"
    assert meta["training"]["command"].startswith("python scripts/train_bundled.py --model numbers3")
    assert meta["training"]["steps"] == 20000


@pytest.fixture(scope="module")
def model():
    return load_model("numbers3", device="cpu")


def test_bundle(model):
    assert model.cond_kind == "class" and model.family == "class-unet"
    assert model.latent_shape == (1, 8, 24) and model.image_channels == 1
    assert model.class_names == numbers3.CLASS_NAMES and len(model.class_names) == 1000
    assert model.class_names[314] == "three one four"


def test_ships_its_large_label_rule_as_policy_tuned(model):
    # chosen on the train split by scripts/ship_rule.py; calibrated on the same images, for these weights (the
    # "fitted on other weights" warning is given once per process, so the fingerprint is compared directly)
    rule = json.loads((FOLDER / "diffcls.json").read_text())["tuned"]
    assert rule["model"]["fingerprint"] == model.fingerprint
    clf = DiffusionClassifier(model, "tuned", use_cache=False)
    assert clf.policy_cfg.describe() == "halving(rounds=[1, 3, 11], keep=[25, 5, 1], t_band=[0.15, 0.6])"
    assert clf.options.temperature == rule["calibration"]["temperature"] > 0


@pytest.mark.slow
def test_classifies_held_out_triples(model):
    # every 400th held-out triple: 5 of them, from five different hundreds; halving with a one-sample first
    # round keeps 25 of the 1,000 classes: 1,000 + 25 x 2 + 5 x 8 = 1,090 evaluations an image
    pil, y, _ = numbers3.load_split("heldout")
    idx = np.arange(0, 2000, 400)
    clf = DiffusionClassifier(model, "halving", rounds=[1, 3, 11], keep=[25, 5, 1], use_cache=False)
    res = clf.classify([pil[i] for i in idx])
    assert all(r.evaluations == 1090 for r in res)
    hits = np.array([r.label for r in res]) == np.asarray(y)[idx]
    assert hits.sum() >= 4, f"{hits.sum()} of 5 right: {[r.label_name for r in res]}"
