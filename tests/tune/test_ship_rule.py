"""scripts/ship_rule.py: a rule chosen from bench.accuracy_vs_evals rows on a train split becomes a model's tuned
rule, with its calibration fitted on the same images; held-out results are refused."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.evaluate import load_eval_split

from ..scripts_import import script_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ship_rule():
    yield from script_module("ship_rule")


def test_choose_takes_the_cheapest_row_within_the_tolerance_under_the_budget(ship_rule):
    rows = [
        {"name": "a", "accuracy": 0.990, "evals_per_image": 2000},
        {"name": "b", "accuracy": 0.985, "evals_per_image": 1200},
        {"name": "c", "accuracy": 0.982, "evals_per_image": 1100},
        {"name": "d", "accuracy": 0.960, "evals_per_image": 1000},
    ]
    assert ship_rule.choose(rows, 1250, 0.005)["name"] == "c"  # best under 1,250 is b (0.985); c is within 0.5
    assert ship_rule.choose(rows, 1250, 0.0)["name"] == "b"
    assert ship_rule.choose(rows, float("inf"), 0.005)["name"] == "b"
    with pytest.raises(SystemExit, match="no row costs at most 900"):
        ship_rule.choose(rows, 900, 0.005)


@pytest.fixture(scope="module")
def train_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cmd = [sys.executable, "-m", "bench.accuracy_vs_evals", "--model", "digits", "--split", "train", "--every", "40"]
    cmd += ["--limit", "8", "--tag", "t", "--results-dir", str(out), "--no-plot"]
    cmd += ["--only", "halving 2 4 12 / 10 3 1", "exhaustive-5"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return out / "accuracy_vs_evals_t.json"


def test_the_shipped_rule_runs_as_policy_tuned_with_its_calibration(ship_rule, train_result, tmp_path):
    rule = ship_rule.rule_for("digits", train_result, max_evals=64, tolerance_points=0.5, config=None)
    # exhaustive-5 costs 50, halving 64: both are under the budget; on 8 training images both are exact
    assert rule["tuning"]["chosen"]["name"] == "exhaustive-5"
    assert rule["policy"] == {"name": "exhaustive", "n_grid": 5}
    assert rule["model"]["fingerprint"] == load_model("digits").fingerprint
    cal = rule["calibration"]
    assert cal["loss"] == "l2" and cal["temperature"] > 0 and 0 <= cal["floor"] < 1
    f = tmp_path / "rule.json"
    f.write_text(json.dumps(rule))
    pil, y, names, _ = load_eval_split("digits", "train")
    clf = DiffusionClassifier("digits", "tuned", tuned=str(f), use_cache=False)
    assert clf.policy_cfg.describe() == "exhaustive(grid=5)"
    assert clf.options.temperature == pytest.approx(cal["temperature"])
    res = clf.classify(pil[::40][:2], names)
    assert [r.label for r in res] == list(np.asarray(y)[::40][:2])


def test_a_named_row_ships_with_every_option_of_its_policy(ship_rule, train_result):
    rule = ship_rule.rule_for("digits", train_result, float("inf"), 0.5, config="halving 2 4 12 / 10 3 1")
    assert rule["policy"] == {"name": "halving", "rounds": [2, 4, 12], "keep": [10, 3, 1], "t_band": [0.15, 0.6]}
    with pytest.raises(SystemExit, match="has no row 'nope'"):
        ship_rule.rule_for("digits", train_result, float("inf"), 0.5, config="nope")


def test_held_out_results_and_other_models_are_refused(ship_rule, train_result, tmp_path):
    d = json.loads(train_result.read_text())
    held = tmp_path / "accuracy_vs_evals_h.json"
    held.write_text(json.dumps({**d, "split": "heldout"}))
    with pytest.raises(SystemExit, match="never for choosing it"):
        ship_rule.rule_for("digits", held, float("inf"), 0.5, None)
    with pytest.raises(SystemExit, match="measured model 'digits', not 'numbers'"):
        ship_rule.rule_for("numbers", train_result, float("inf"), 0.5, None)
