"""The out-of-distribution flag: the winner's error over the model's threshold, for the policy and loss it was
fitted with only; abstention on request; the same fields through every output."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.data.digits import load_split
from diffcls_fast.engine.ood import ood_score
from diffcls_fast.output import result_line

FAST = {"rounds": [1, 2, 4]}  # halving, few samples: the flag does not need many


@pytest.fixture(scope="module")
def model():
    """digits with a known rule for halving at FAST's options (a threshold between digits and a blank image)."""
    m = load_model("digits")
    clf = DiffusionClassifier(m, "halving", **FAST)
    cal = {k: dict(v) for k, v in m.calibration.items()}
    rule = {"threshold": 0.35, "policy": clf.policy_cfg.to_dict()}
    cal["halving"] = cal["halving"] | {"out_of_distribution": rule}
    return dataclasses.replace(m, calibration=cal)


def test_score_is_the_winner_error_over_the_threshold():
    assert ood_score(0.7, 0.35) == pytest.approx(2.0) and ood_score(0.7, None) is None
    assert ood_score(float("nan"), 0.35) is None


def test_a_blank_image_is_flagged_and_a_digit_is_not(model):
    digits, _, _ = load_split("heldout")
    clf = DiffusionClassifier(model, "halving", **FAST)
    digit, blank = clf.classify([digits[0], Image.new("L", (8, 8), 255)])
    assert digit.out_of_distribution is False and digit.ood_score < 1
    assert blank.out_of_distribution is True and blank.ood_score > 1
    assert blank.ood_score == pytest.approx(blank.mean_errors[blank.label] / 0.35)
    assert not blank.abstained and blank.label >= 0  # flagged, still answered
    d = blank.to_dict()
    assert d["out_of_distribution"] is True and d["label"] == blank.label_name and d["abstained"] is False
    assert "OUT OF DISTRIBUTION (score" in result_line("b.png", d)
    assert "OUT OF DISTRIBUTION" not in result_line("d.png", digit.to_dict())


def test_abstention_answers_no_label_and_keeps_the_best_guess(model):
    clf = DiffusionClassifier(model, "halving", abstain_ood=True, **FAST)
    digits, _, _ = load_split("heldout")
    digit, blank = clf.classify([digits[0], Image.new("L", (8, 8), 0)])
    if not blank.out_of_distribution:
        pytest.skip("a black image is under this test's threshold")  # the white image above is the firm case
    assert blank.abstained and not digit.abstained
    d = blank.to_dict()
    assert d["label"] is None and d["label_index"] == blank.label and d["top"]
    assert result_line("b.png", d).startswith("b.png: abstained (out of distribution, score")
    assert clf.with_options(abstain_ood=False).options.abstain_ood is False
    with pytest.raises(UserError, match="abstain_ood must be true or false"):
        DiffusionClassifier(model, "halving", abstain_ood="yes", **FAST)


def test_the_rule_applies_only_to_the_options_and_loss_it_was_fitted_with(model):
    white = Image.new("L", (8, 8), 255)
    assert DiffusionClassifier(model, "halving", **FAST).options.ood_threshold == 0.35
    other_options = DiffusionClassifier(model, "halving", rounds=[2, 4, 12])
    assert other_options.options.ood_threshold is None
    r = other_options.classify([white], ["zero", "one"])[0]
    assert r.ood_score is None and r.out_of_distribution is None and r.to_dict()["out_of_distribution"] is None
    with pytest.warns(UserWarning, match="fitted with loss l2"):  # the temperature's own warning
        assert DiffusionClassifier(model, "halving", loss="l1", **FAST).options.ood_threshold is None
    assert DiffusionClassifier(model, "ttest").options.ood_threshold is None  # no rule for ttest in this fixture
    view = DiffusionClassifier(model, "ttest").with_options(policy="halving", **FAST)
    assert view.options.ood_threshold == 0.35  # derived options look the rule up again


def test_a_malformed_rule_in_diffcls_json_is_one_line(tmp_path):
    import json
    import shutil

    from diffcls_fast.models.bundled import BUNDLED

    folder = tmp_path / "m"
    shutil.copytree(BUNDLED["digits"], folder)
    meta = json.loads((folder / "diffcls.json").read_text())
    meta["calibration"]["halving"]["out_of_distribution"] = {"threshold": -1}
    (folder / "diffcls.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"out_of_distribution needs a threshold > 0"):
        load_model(folder)


def test_failed_and_one_class_results_have_no_score(model):
    clf = DiffusionClassifier(model, "halving", **FAST)
    (r,) = clf.classify([np.zeros((1, 8, 8), np.float32)], ["zero"])  # one class: answered without the model
    assert r.ood_score is None and r.to_dict()["abstained"] is False
