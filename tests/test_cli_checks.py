"""Every argument and input file is checked before the model loads; bugs get one line and a --debug hint.

The validation-order tests pass ``--model /no/such/model``: loading it would fail, so an
error about anything else proves that thing was checked first.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffcls_fast import cli

ROOT = Path(__file__).resolve().parents[1]
IMG = str(ROOT / "examples" / "digit-0.png")
NO_MODEL = ["--model", "/no/such/model"]


@pytest.fixture
def run_cli(capsys):
    """cli.main in this process (fast); the one-line contract is the same as the console script's."""

    def run(*args):
        capsys.readouterr()
        try:
            rc = cli.main(list(args))
        except SystemExit as e:  # argparse
            rc = e.code
        cap = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=cap.out, stderr=cap.err)

    return run


def run_subprocess(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=env,
    )


def one_line(proc, fragment, rc=2):
    err = proc.stderr.strip()
    assert proc.returncode == rc, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("diffcls-fast: error: ") and fragment in err, err
    assert "no such folder" not in err or "/no/such/model" not in err, "the model was loaded first"


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    for c in ("zero", "seven"):
        (d / c).mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "digit-0.png", d / "zero" / "a.png")
    shutil.copy(ROOT / "examples" / "digit-7.png", d / "seven" / "b.png")
    return d


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--max-inflight", "-3"], "argument --max-inflight: must be >= 1"),
        (["--batch-size", "many"], "expected a positive integer, got 'many'"),
        (["--n-grid", "0"], "argument --n-grid"),
        (["--n-samples", "10", "0"], "argument --n-samples"),
        (["--min-scores", "0"], "argument --min-scores"),
        (["--cutoff-pval", "2"], "argument --cutoff-pval: must be in (0, 1)"),
        (["--temperature", "0"], "argument --temperature"),
        (["--temperature", "inf"], "argument --temperature"),
        (["--policy", "greedy"], "argument --policy: invalid choice"),
    ],
)
def test_bad_numeric_options_are_one_line(run_cli, args, fragment):
    one_line(run_cli("classify", IMG, *NO_MODEL, *args), fragment)


def test_limit_must_be_positive():
    one_line(run_subprocess("eval", "--limit", "0"), "argument --limit: must be >= 1")  # the console entry point


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--classes", "a,b,a"], "duplicate class name 'a'"),
        (["--classes", ""], "class list is empty"),
        (["--classes", "a", "--prompts", "p.csv"], "not both"),
        (["--device", "bogus"], "not a device"),
        (["--dtype", "fp8"], "unknown dtype"),
    ],
)
def test_classify_checks_before_loading(run_cli, args, fragment):
    one_line(run_cli("classify", IMG, *NO_MODEL, *args), fragment)


def test_classify_prompts_and_images_before_loading(run_cli, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("classidx,prompt\n0,a zero\nx,a one\n")
    one_line(run_cli("classify", IMG, *NO_MODEL, "--prompts", str(csv)), "classidx 'x' is not an integer")
    one_line(run_cli("classify", IMG, str(tmp_path / "nope.png"), *NO_MODEL), "no such file")


def test_eval_checks_out_prompts_and_data_before_loading(run_cli, tmp_path, data_dir):
    base = ["eval", "--data", str(data_dir), *NO_MODEL]
    one_line(run_cli(*base, "--out", str(tmp_path)), "is a folder")
    one_line(run_cli(*base, "--out", str(tmp_path / "missing" / "out.jsonl")), "no such folder")
    one_line(run_cli(*base, "--out", "/proc/diffcls.jsonl"), "cannot write")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "zero/a.png", "config": "x", "correct": 1, "evaluations_spent": 3}\n[1, 2]\n')
    one_line(run_cli(*base, "--out", str(bad)), f"{bad}:2: a JSON list")
    csv = tmp_path / "p.csv"
    csv.write_text("classidx,prompt,classname\n0,a zero,zero\n1,a one,one\n")
    one_line(run_cli(*base, "--prompts", str(csv)), "do not match the data's classes")
    one_line(run_cli("eval", "--data", str(tmp_path / "nodata"), *NO_MODEL), "no such data folder")
    one_line(run_cli(*base, "--noise-path", str(csv)), "not a safetensors file")


def test_eval_refuses_an_out_file_held_by_another_eval(tmp_path, data_dir):
    out = tmp_path / "out.jsonl"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running eval holds it
    try:
        proc = run_subprocess("eval", "--data", str(data_dir), *NO_MODEL, "--out", str(out))
    finally:
        os.close(fd)
    one_line(proc, "is being written by another eval")
    if os.path.exists("/proc/locks"):
        assert f"(pid {os.getpid()})" in proc.stderr


def _boom(a):
    raise RuntimeError("something inside broke\nsecond line")


def test_a_bug_is_one_line_and_a_debug_hint(monkeypatch, capsys):
    monkeypatch.delenv("DIFFCLS_DEBUG", raising=False)
    monkeypatch.setattr(cli, "cmd_classify", _boom)
    assert cli.main(["classify", IMG]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "diffcls-fast: internal error: RuntimeError: something inside broke",
        "diffcls-fast: this is a bug; re-run with --debug (or DIFFCLS_DEBUG=1) for the full traceback",
    ]


@pytest.mark.parametrize("how", [["--debug", "classify", IMG], ["classify", IMG, "--debug"], "env"])
def test_debug_shows_the_traceback(monkeypatch, capsys, how):
    monkeypatch.setattr(cli, "cmd_classify", _boom)
    if how == "env":
        monkeypatch.setenv("DIFFCLS_DEBUG", "1")
        how = ["classify", IMG]
    else:
        monkeypatch.delenv("DIFFCLS_DEBUG", raising=False)
    assert cli.main(how) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: something inside broke" in err


def test_user_errors_stay_one_line_with_debug(capsys):
    assert cli.main(["--debug", "classify", IMG, "--device", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a device" in err[0]


def test_json_summary_is_unchanged_by_the_checks():
    # the parser still accepts the documented commands
    a = cli.build_parser().parse_args(["eval", "--limit", "3", "--out", "x.jsonl", "--json"])
    assert a.limit == 3 and a.out == "x.jsonl" and not a.debug
    assert json.dumps(vars(a), default=str)


def test_export_folders_are_checked_before_loading(run_cli, tmp_path):
    pytest.importorskip("onnx")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    one_line(run_cli("export", *NO_MODEL, "--out", str(a_file)), "exists and is not a folder")
    one_line(run_cli("export", *NO_MODEL, "--out", str(a_file / "sub")), "cannot create the export folder")
    pytest.importorskip("onnxruntime")
    one_line(
        run_cli("classify", IMG, *NO_MODEL, "--backend", "onnx", "--cache-dir", str(a_file)),
        "cannot create the export folder",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--t-band", "0.6", "0.1"], "0 <= lo < hi <= 1"),
        (["--rounds", "3", "2", "5"], "positive and increasing"),
        (["--keep", "10", "3"], "same, non-zero number"),
    ],
)
def test_halving_options_are_checked_before_loading(run_cli, args, fragment):
    one_line(run_cli("classify", IMG, *NO_MODEL, "--policy", "halving", *args), fragment)


@pytest.mark.parametrize(
    "opts, msg",
    [
        (["--seed", "-1"], "non-negative integer"),
        (["--min-scores", "30", "--max-scores", "20"], "min_scores <= max_scores"),
        (["--policy", "adaptive", "--n-samples", "50", "--to-keep", "5", "1"], "same, non-zero number of values"),
        (["--policy", "halving", "--rounds", "4", "2", "8"], "positive and increasing"),
    ],
)
def test_policy_options_are_checked_before_the_model_loads(run_cli, opts, msg):
    # NO_MODEL names a model folder that does not exist: an option error must come first
    one_line(run_cli("classify", IMG, *NO_MODEL, *opts), msg)


def test_short_noise_file_is_refused_before_the_model_loads(run_cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "n.safetensors"
    save_file({"noise": torch.randn(16, 1, 8, 8)}, str(p))
    one_line(run_cli("classify", IMG, *NO_MODEL, "--noise-path", str(p)), "may use up to 2000 samples")
    one_line(
        run_cli("classify", IMG, *NO_MODEL, "--noise-path", str(p), "--policy", "exhaustive", "--n-grid", "50"),
        "lower --n-grid to at most 16",
    )


def test_export_refuses_options_its_format_ignores(run_cli):
    for opts, msg in (
        (["--format", "onnx", "--classes", "cat,dog"], "--classes: only --format aoti"),
        (["--format", "onnx", "--seed", "0", "--noise-rows", "10"], "--noise-rows, --seed: only --format aoti"),
        (["--format", "aoti", "--seed", str(2**64)], "takes seeds below 2**64"),
    ):
        one_line(run_cli("export", *NO_MODEL, *opts), msg)


def test_eval_refuses_options_it_would_ignore(run_cli):
    one_line(run_cli("eval", *NO_MODEL, "--shared-noise"), "--shared-noise is an option of --task swap")
    one_line(run_cli("eval", *NO_MODEL, "--ray-max-restarts", "2"), "--ray-max-restarts needs --ray")


def test_image_mode_and_range_are_checked_before_loading(run_cli, tmp_path):
    """A file that decodes but cannot be preprocessed (a float image over 255, a mode I image
    below 0) is refused like a missing one, not failed after the model has loaded."""
    import numpy as np
    from PIL import Image

    hot = tmp_path / "hot.tif"
    Image.fromarray(np.full((8, 8), 997.0, dtype=np.float32), "F").save(hot)
    neg = tmp_path / "neg.tif"
    Image.fromarray(np.full((8, 8), -5, dtype=np.int32), "I").save(neg)
    one_line(
        run_cli("classify", IMG, str(hot), *NO_MODEL),
        "hot.tif: a float (mode F) image must hold values in [0, 1] or [0, 255]",
    )
    one_line(run_cli("classify", str(neg), *NO_MODEL), "neg.tif: a mode I image must hold values")
    one_line(run_cli("match", IMG, str(hot), *NO_MODEL, "--captions", "zero", "one"), "hot.tif: a float (mode F)")


def test_options_the_policy_does_not_read_are_named(run_cli):
    r = run_cli("classify", IMG, *NO_MODEL, "--n-grid", "10", "--rounds", "1", "2", "--min-scores", "5")
    warning, error = r.stderr.strip().splitlines()
    assert (
        warning
        == "diffcls-fast: warning: --policy ttest does not read --n-grid (exhaustive), --rounds (halving); they change"
        " nothing"
    )
    assert "/no/such/model" in error  # a warning, not a refusal: the run went on to load the model
    assert (
        "warning"
        not in run_cli(
            "classify", IMG, *NO_MODEL, "--policy", "halving", "--rounds", "1", "2", "--keep", "3", "1"
        ).stderr
    )


def test_swap_eval_checks_its_own_policy(run_cli, tmp_path):
    """eval --task swap runs exhaustive on --n-grid: the noise file is checked against that, and --policy is refused."""
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "n.safetensors"
    save_file({"noise": torch.randn(50, 1, 8, 16)}, str(p))
    r = run_cli("eval", "--task", "swap", *NO_MODEL, "--n-grid", "50", "--noise-path", str(p))
    assert "may use up to" not in r.stderr and "/no/such/model" in r.stderr, r.stderr
    one_line(
        run_cli("eval", "--task", "swap", *NO_MODEL, "--n-grid", "51", "--noise-path", str(p)),
        "lower --n-grid to at most 50",
    )
    one_line(
        run_cli("eval", "--task", "swap", *NO_MODEL, "--policy", "ttest"), "set the grid with --n-grid, not --policy"
    )


def test_an_ensemble_larger_than_the_batch_is_refused_before_loading(run_cli, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("classidx,prompt,classname\n0,a zero,zero\n0,the digit 0,zero\n0,zero,zero\n1,a seven,seven\n")
    one_line(
        run_cli("classify", IMG, *NO_MODEL, "--prompts", str(csv), "--batch-size", "2"),
        "class 'zero' has 3 prompts, more than the largest denoiser batch (2 rows)",
    )
