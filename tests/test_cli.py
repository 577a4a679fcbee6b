"""End-to-end CLI behaviour on the bundled model, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffcls_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("digit-*.png"))


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess (checks exit code, stderr, no traceback)."""
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc, fragment):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err


@pytest.mark.slow
def test_classify_examples_right_labels(capsys):
    assert len(EXAMPLES) >= 4
    rc = main(["classify", *map(str, EXAMPLES), "--json", "--no-cache"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for path, row in zip(EXAMPLES, rows):
        want = names[int(path.stem.split("-")[1])]
        assert row["label"] == want, (path, row["top"])
        assert len(row["top"]) == 5 and abs(sum(t["p"] for t in row["top"]) - 1) < 0.05
        assert 0 < row["evaluations"] <= row["evaluations_spent"]


def test_missing_file():
    assert_one_line_error(run_cli("classify", "nope.png"), "no such file")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("this is not an image\n")
    assert_one_line_error(run_cli("classify", str(p)), "not a readable image")


def test_truncated_png(tmp_path):
    data = EXAMPLES[0].read_bytes()
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("classify", str(p)), "trunc.png")


def test_empty_class_list():
    assert_one_line_error(run_cli("classify", str(EXAMPLES[0]), "--classes", ""), "class list is empty")


def test_duplicate_class_names():
    assert_one_line_error(
        run_cli("classify", str(EXAMPLES[0]), "--classes", "one,two,one"), "duplicate class name 'one'"
    )


@pytest.mark.parametrize(
    "csv_text, fragment",
    [
        ("classidx,prompt\n0,a zero\nx,a one\n", "classidx 'x' is not an integer"),
        ("classidx,prompt\n0,a zero\n1\n", "expected 2 columns"),
        ("classidx,prompt\n0,a zero\n2,a two\n", "missing [1]"),
        ("classidx,prompt\n0,a zero\n1,\n", "empty prompt"),
        ("idx,text\n0,a zero\n", "header must have columns"),
        ("classidx,prompt,classname\n0,a zero,zero\n0,the zero,nil\n", "named both"),
    ],
)
def test_prompts_csv_bad_row(tmp_path, csv_text, fragment):
    p = tmp_path / "prompts.csv"
    p.write_text(csv_text)
    assert_one_line_error(run_cli("classify", str(EXAMPLES[0]), "--prompts", str(p)), fragment)


def test_single_class_is_certain_without_running_the_model(capsys):
    rc = main(["classify", str(EXAMPLES[0]), "--classes", "seven", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] == "seven" and row["top"] == [{"class": "seven", "p": 1.0}] and row["evaluations_spent"] == 0


def test_unknown_model_folder():
    assert_one_line_error(run_cli("classify", str(EXAMPLES[0]), "--model", "/no/such/model"), "no such folder")


def test_bad_policy_settings():
    assert_one_line_error(
        run_cli("classify", str(EXAMPLES[0]), "--policy", "adaptive", "--n-samples", "50", "500", "--to-keep", "5"),
        "same, non-zero number",
    )


@pytest.mark.slow
def test_prompt_csv_ensemble_classifies(tmp_path, capsys):
    p = tmp_path / "prompts.csv"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = ["classidx,prompt,classname"]
    for i, n in enumerate(names):
        rows += [f"{i},a handwritten digit {n},{n}", f"{i},the number {i},{n}"]
    p.write_text("\n".join(rows) + "\n")
    seven = [e for e in EXAMPLES if e.stem.endswith("-7")][0]
    assert main(["classify", str(seven), "--prompts", str(p), "--json", "--no-cache"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] == "seven"
    assert row["evaluations"] % 2 == 0  # two prompts per class: every query costs two evaluations
