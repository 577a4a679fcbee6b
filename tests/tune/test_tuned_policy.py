"""``--policy tuned``: a rule file runs as its concrete policy, with its own calibration; bad files are one line."""

import json
import shutil

import numpy as np
import pytest

from diffcls_fast import DiffusionClassifier, UserError, load_model
from diffcls_fast.engine.policies import PolicyConfig, read_rule
from diffcls_fast.models.bundled import BUNDLED

RULE = {
    "format": "diffcls-tuned/1",
    "policy": {"name": "halving", "rounds": [2, 6], "keep": [3, 1], "t_band": [0.1, 0.7]},
    "calibration": {"temperature": 0.0123, "floor": 0.0456, "loss": "l2"},
}


@pytest.fixture(scope="module")
def digits():
    return load_model("digits", device="cpu")


def _write(tmp_path, rule, name="rule.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rule))
    return str(path)


def test_a_tuned_rule_runs_as_its_policy_with_its_calibration(tmp_path, digits):
    clf = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, RULE), use_cache=False)
    assert clf.policy_cfg.name == "halving"
    assert clf.policy_cfg.describe() == "halving(rounds=[2, 6], keep=[3, 1], t_band=[0.1, 0.7])"
    assert (clf.temperature, clf.posterior_floor) == (0.0123, 0.0456)
    assert clf.with_options(seed=5).temperature == 0.0123  # a later change keeps the rule's calibration
    assert clf.with_options(temperature=0.5).temperature == 0.5  # an explicit value wins
    same = DiffusionClassifier(digits, "halving", rounds=[2, 6], keep=[3, 1], t_band=[0.1, 0.7], use_cache=False)
    img = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    a, b = clf.classify([img])[0], same.classify([img])[0]
    assert a.label == b.label and a.evaluations == b.evaluations == 10 * 2 + 3 * 4
    np.testing.assert_allclose(a.mean_errors, b.mean_errors)


def test_explicit_temperature_beats_the_rules(tmp_path, digits):
    clf = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, RULE), temperature=0.2, use_cache=False)
    assert (clf.temperature, clf.posterior_floor) == (0.2, 0.0)


def test_a_rule_fitted_with_another_loss_gives_no_calibration(tmp_path, digits):
    rule = {**RULE, "calibration": {**RULE["calibration"], "loss": "l1"}}
    clf = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, rule), use_cache=False)
    assert clf.temperature != 0.0123


def test_the_model_folders_own_rule(tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(BUNDLED["digits"], folder)
    with pytest.raises(UserError, match="ships no tuned rule; pass --tuned FILE"):
        DiffusionClassifier(str(folder), "tuned")
    meta = json.loads((folder / "diffcls.json").read_text())
    (folder / "diffcls.json").write_text(json.dumps({**meta, "tuned": RULE}))
    clf = DiffusionClassifier(str(folder), "tuned", use_cache=False)
    assert clf.policy_cfg.name == "halving" and clf.temperature == 0.0123


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "no such file"),
        ("{not json", "cannot read it as JSON"),
        ({"rounds": [1]}, "not a diffcls-fast tune output"),
        ({**RULE, "format": "diffcls-tuned/9"}, "this version reads diffcls-tuned/1"),
        ({**RULE, "policy": {"name": "tuned"}}, "is not one of exhaustive, adaptive, ttest, halving"),
        ({**RULE, "policy": {"name": "halving", "rounds": [2, 1], "keep": [3, 1]}}, "--rounds are cumulative"),
        ({**RULE, "calibration": {"temperature": 0}}, "calibration needs a temperature > 0"),
    ],
)
def test_a_bad_rule_file_is_one_line(tmp_path, digits, content, fragment):
    path = tmp_path / "rule.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as e:
        DiffusionClassifier(digits, "tuned", tuned=str(path))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_policy_config_delegates_for_code_that_builds_one_directly(tmp_path):
    path = _write(tmp_path, RULE)
    cfg = PolicyConfig("tuned", tuned=path)
    cfg.validate(1000, 10)
    assert cfg.describe() == "tuned(halving(rounds=[2, 6], keep=[3, 1], t_band=[0.1, 0.7]))"
    assert cfg.max_samples(1000)[0] == 6
    assert read_rule(path)["calibration"]["temperature"] == 0.0123


def test_a_server_started_with_a_rule_finds_it_for_a_request_that_asks_for_tuned(tmp_path, digits):
    """serve --policy ttest --tuned FILE: a request with policy 'tuned' runs the file's rule (derive)."""
    path = _write(tmp_path, RULE)
    server_default = DiffusionClassifier(digits, "ttest", tuned=path, use_cache=False)
    req = server_default.with_options(policy="tuned")
    assert req.policy_cfg.name == "halving" and req.temperature == 0.0123
    # and a server whose default is the rule keeps its source for the next request
    tuned_default = DiffusionClassifier(digits, "tuned", tuned=path, use_cache=False)
    again = tuned_default.with_options(policy="ttest").with_options(policy="tuned")
    assert again.policy_cfg.rounds == [2, 6]


def test_switching_away_from_a_tuned_rule_drops_its_calibration(tmp_path, digits):
    clf = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, RULE), use_cache=False)
    other = clf.with_options(policy="halving")
    plain = DiffusionClassifier(digits, "halving", use_cache=False)
    assert (other.temperature, other.posterior_floor) == (plain.temperature, plain.posterior_floor)
    assert other.temperature != 0.0123
    mine = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, RULE), temperature=0.3, use_cache=False)
    assert mine.with_options(policy="halving").temperature == 0.3  # the caller's own value stays


def test_a_rule_without_calibration_runs_uncalibrated_not_on_another_rules_calibration(tmp_path, digits):
    from diffcls_fast.engine.options import DEFAULT_TEMPERATURE

    rule = {k: v for k, v in RULE.items() if k != "calibration"}
    with pytest.warns(Warning, match="has no calibration"):
        clf = DiffusionClassifier(digits, "tuned", tuned=_write(tmp_path, rule, "bare.json"), use_cache=False)
    assert (clf.temperature, clf.posterior_floor) == (DEFAULT_TEMPERATURE, 0.0)
