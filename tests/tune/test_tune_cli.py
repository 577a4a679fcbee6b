"""``diffcls-fast tune`` end to end on the bundled digits model: tables, the rule file, resume, and using it."""

import json
import subprocess
import sys

import pytest

from diffcls_fast.cli import main


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_tune_writes_a_rule_that_classify_and_eval_run(tmp_path, capsys):
    out = tmp_path / "rule.json"
    args = ["tune", "--model", "digits", "--limit", "20", "--grid", "8", "--out", str(out), "--no-cache", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rule = json.loads(out.read_text())
    assert rule["format"] == "diffcls-tuned/1" and rule["policy"]["name"] == "halving"
    assert rule["model"]["name"] == "digits" and rule["calibration"]["loss"] == "l2"
    t = rule["tuning"]
    assert t["images"] == 20 and t["grid"] == 8 and t["images_scored"] == 20 and t["source"] == "train split"
    assert t["candidates"] > 50 and t["front"] and t["chosen"]["evaluations"] <= 80
    assert first["tuning"]["chosen"] == t["chosen"]
    # a rerun reads the finished tables: nothing is scored again, and the same rule comes out
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["tuning"]["images_scored"] == 0 and again["policy"] == rule["policy"]
    # the rule runs
    rc = main(["eval", "--model", "digits", "--limit", "10", "--policy", "tuned", "--tuned", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["accuracy"] >= 0.8


def test_the_report_is_a_table(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["tune", "--model", "digits", "--limit", "10", "--grid", "4", "--out", str(out), "--no-cache"]) == 0
    text = capsys.readouterr().out
    assert "accuracy  evals/img  rule" in text and "chosen (tolerance" in text and f"--tuned {out}" in text


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--split", "heldout"], "never held-out images"),
        (["--out", "/proc/nope/x.json"], "cannot write into /proc/nope"),
        (["--max-loss", "-1"], "--max-loss is in accuracy points"),
        (["--folds", "1"], "--folds must be at least 2"),
        (["--limit", "5"], "at least 10 labelled images"),
        (["--budget", "1"], "no candidate rule costs that little"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, fragment):
    base = [
        "tune",
        "--model",
        "digits",
        "--grid",
        "4",
        "--limit",
        "10",
        "--no-cache",
        "--out",
        str(tmp_path / "r.json"),
    ]
    proc = _cli(*base, *args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and fragment in err, err
