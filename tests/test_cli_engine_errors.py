"""The CLI on engine failures: bad scheduler arguments, unusable classes, unknown words, non-finite
noise, and a model with a NaN weight (per-image errors, exit code 1, the run goes on)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffcls_fast.cli import main

from .test_cli import EXAMPLES, ROOT, assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "args, fragment",
    [(["--batch-size", "0"], "--batch-size: must be >= 1"), (["--max-inflight", "-1"], "--max-inflight: must be >= 1")],
)
def test_bad_scheduler_arguments(args, fragment):
    assert_one_line_error(run_cli("classify", str(EXAMPLES[0]), *args), fragment)


def test_noise_file_with_a_nan_row(tmp_path):
    noise = torch.randn(40, 1, 8, 8)
    noise[3] = float("nan")
    path = tmp_path / "noise.safetensors"
    save_file({"noise": noise}, path)
    assert_one_line_error(
        run_cli("classify", str(EXAMPLES[0]), "--noise-path", str(path), "--no-cache"), "row(s) 3 of 40"
    )


def test_identical_classes_one_line():
    assert_one_line_error(run_cli("classify", str(EXAMPLES[0]), "--classes", "cat,dog", "--no-cache"), "'cat', 'dog'")


@pytest.mark.slow
def test_unknown_word_warning_is_one_line_and_output_shows_needed_and_spent(capsys):
    assert main(["classify", str(EXAMPLES[0]), "--classes", "zero,one,cat", "--no-cache"]) == 0
    cap = capsys.readouterr()
    warn = [line for line in cap.err.splitlines() if "warning" in line]
    assert warn == [
        "diffcls-fast: warning: the digits tokenizer does not know 'cat' (class 'cat') and encodes it as [UNK]"
    ]
    (line,) = cap.out.splitlines()
    assert line.startswith(f"{EXAMPLES[0]}: zero  [top-5: ")
    needed, spent = line.split("]  ")[1].split(" evals (")
    assert 0 < int(needed) <= int(spent.split(" spent)")[0])


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nan") / "digits-nan"
    shutil.copytree(ROOT / "diffcls_fast" / "models" / "digits", d)
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    w["conv_out.weight"].view(-1)[0] = float("nan")
    save_file(w, f)
    return d


@pytest.mark.slow
def test_classify_with_a_nan_weight_reports_each_image_and_exits_1(nan_model_dir, capsys):
    rc = main(["classify", *map(str, EXAMPLES[:2]), "--model", str(nan_model_dir), "--no-cache", "--min-scores", "3"])
    cap = capsys.readouterr()
    assert rc == 1
    lines = cap.out.splitlines()
    assert len(lines) == 2
    for path, line in zip(EXAMPLES, lines):
        assert line.startswith(f"{path}: failed: non-finite denoiser error (nan) at sample 0, class 'zero'")
    assert "2 of 2 images failed" in cap.err and "Traceback" not in cap.err


@pytest.mark.slow
def test_eval_with_a_nan_weight_writes_failed_rows(nan_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for p in EXAMPLES[:2]:
        name = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
            int(Path(p).stem.split("-")[1])
        ]
        (data / name).mkdir(parents=True)
        shutil.copy(p, data / name / p.name)
    out = tmp_path / "eval.jsonl"
    rc = main(
        [
            "eval",
            "--model",
            str(nan_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--json",
            "--no-cache",
            "--min-scores",
            "3",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 1
    summary = json.loads(cap.out.splitlines()[-1])
    assert summary["images"] == 2 and summary["failed"] == 2 and summary["accuracy"] == 0.0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["correct"] == 0 and r["error"].startswith("non-finite") for r in rows)
    assert "2 of 2 images failed" in cap.err
