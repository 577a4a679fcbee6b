"""Keep the benchmark scripts alive in CI (tiny sizes; timings are not checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_bench_smoke():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # The bench runs under the interpreter; ask a fresh process whether it can (the variable must be set
    # before the kernels are imported, which this process may already have done compiled on a GPU).
    probe = "from diffcls_fast.kernels.dispatch import interpreter_problem; print(interpreter_problem() or '')"
    why = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    ).stdout.strip()
    if why:
        pytest.skip(why)
    p = subprocess.run(
        [sys.executable, "-m", "bench.kernels", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "make_noisy" in p.stdout and "query_errors" in p.stdout and "copy bandwidth" in p.stdout


def test_accuracy_vs_evals_runs_in_parts_and_resumes(tmp_path):
    """A long front is run in parts: --only picks and orders configurations, --resume keeps the rows
    already in --results-dir/<tag>.json, and every row says where it ran."""
    import json

    def run(*only):
        cmd = [
            sys.executable,
            "-m",
            "bench.accuracy_vs_evals",
            "--model",
            "numbers",
            "--limit",
            "2",
            "--tag",
            "t",
            "--results-dir",
            str(tmp_path),
            "--resume",
            "--no-plot",
            "--only",
            *only,
        ]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    out = run("halving 1 3 7 / 10 3 1", "exhaustive-5")  # exact names: not also exhaustive-50
    assert out.index("halving 1 3 7 / 10 3 1") < out.index("exhaustive-5 ") and "exhaustive-50" not in out
    out = run("exhaustive-5", "halving 1 3 7 / 20 5 1")
    assert "exhaustive-5                       (resumed)" in out and "halving 1 3 7 / 20 5 1" in out
    d = json.loads((tmp_path / "accuracy_vs_evals_t.json").read_text())
    assert [r["name"] for r in d["results"]] == ["halving 1 3 7 / 10 3 1", "exhaustive-5", "halving 1 3 7 / 20 5 1"]
    assert d["images"] == 2 and all(
        r["backend"] == "torch" and r["dtype"] == "float32" and r["device"] for r in d["results"]
    )
    assert d["results"][1]["evals_per_image"] == 500.0
    assert (tmp_path / "per_image" / "accuracy_vs_evals_t.npz").is_file()


def test_accuracy_vs_evals_resumes_a_configuration_between_parts(tmp_path):
    """--chunk runs a configuration a few images at a time and saves the finished ones, so a killed run
    resumes inside a long configuration; the picks are those of one run in one part."""
    import json

    import numpy as np

    from bench.accuracy_vs_evals import _part_path, _save_part

    name = "halving 1 3 7 / 10 3 1"

    def run(tag, *extra, ok=True):
        cmd = [
            sys.executable,
            "-m",
            "bench.accuracy_vs_evals",
            "--model",
            "numbers",
            "--limit",
            "3",
            "--tag",
            tag,
            "--results-dir",
            str(tmp_path),
            "--resume",
            "--no-plot",
            "--only",
            name,
            *extra,
        ]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if not ok:
            assert p.returncode != 0
            return p.stderr
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    def per_image(tag):
        z = np.load(tmp_path / "per_image" / f"accuracy_vs_evals_{tag}.npz")
        return {k: z[f"c0_{k}"] for k in ("label", "evals", "mean_errors", "n_scores")}

    run("whole")
    out = run("parts", "--chunk", "2")
    assert "2 of 3 images" in out and not list(
        (tmp_path / "per_image").glob("*partial*")
    )  # removed once the row is saved
    whole, parts = per_image("whole"), per_image("parts")
    for k in ("label", "evals", "n_scores"):
        np.testing.assert_array_equal(parts[k], whole[k])
    np.testing.assert_allclose(parts["mean_errors"], whole["mean_errors"], rtol=1e-5)

    # a run killed after its first part left image 0 behind: the next run starts at image 1
    first = {k: v[:1] for k, v in whole.items()}
    first |= {"spent": whole["evals"][:1], "seconds": np.float64(1.0), "rows": np.int64(10), "padded": np.int64(0)}
    from bench.common import environment

    here = environment("cpu")["device"]
    part = _part_path(tmp_path / "per_image" / "accuracy_vs_evals_killed.npz", name)
    _save_part(part, name, first, "another machine")
    out = run("killed", "--chunk", "1")  # a part from elsewhere is not continued
    assert "starts again: its saved part ran on another machine" in out and "resumed" not in out
    (tmp_path / "accuracy_vs_evals_killed.json").unlink()
    _save_part(part, name, first, here)
    out = run("killed", "--chunk", "1")
    assert "resumed at image 1 of 3" in out and "2 of 3 images" in out
    np.testing.assert_array_equal(per_image("killed")["label"], whole["label"])
    row = json.loads((tmp_path / "accuracy_vs_evals_killed.json").read_text())["results"][0]
    assert row["parts_of"] == 1 and row["evals_per_image"] == float(np.mean(whole["evals"]))

    # the front records its weights; a part or a front of other weights is not continued with these
    payload = json.loads((tmp_path / "accuracy_vs_evals_killed.json").read_text())
    assert payload["weights"]["fingerprint"] and payload["weights"]["training_steps"] > 0
    _save_part(part, name, first, here, "other-weights")
    (tmp_path / "accuracy_vs_evals_killed.json").unlink()
    out = run("killed", "--chunk", "1")
    assert "starts again: its saved part measured other weights (other-weights)" in out
    payload["weights"]["fingerprint"] = "other-weights"
    (tmp_path / "accuracy_vs_evals_killed.json").write_text(json.dumps(payload))
    err = run("killed", ok=False)
    assert "measured other weights (fingerprint other-weights" in err and "new --tag" in err


def test_accuracy_vs_evals_takes_every_kth_train_image_and_the_report_skips_it(tmp_path, monkeypatch):
    """--split train --every K: an even subset of the train split, for choosing rules; the report shows only
    held-out fronts, one per (images, every)."""
    import json

    cmd = [sys.executable, "-m", "bench.accuracy_vs_evals", "--model", "digits", "--split", "train", "--every", "50"]
    cmd += ["--limit", "3", "--results-dir", str(tmp_path), "--no-plot", "--only", "exhaustive-5"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (f,) = tmp_path.glob("accuracy_vs_evals_digits_train_every50_*.json")
    d = json.loads(f.read_text())
    assert d["split"] == "train" and d["every"] == 50 and d["images"] == 3
    from diffcls_fast.evaluate import load_eval_split

    assert d["labels"] == [int(v) for v in load_eval_split("digits", "train")[1][::50][:3]]

    import bench.report as report

    (tmp_path / "bench" / "results").mkdir(parents=True)
    heldout = {**d, "split": "heldout", "images": 3, "date": "2026-01-01"}
    for name, payload in {
        f.name: d,
        "accuracy_vs_evals_digits_a.json": {**heldout, "every": 1},
        "accuracy_vs_evals_digits_b.json": {**heldout, "every": 50},
    }.items():
        (tmp_path / "bench" / "results" / name).write_text(json.dumps(payload))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    fronts = report._per_size("accuracy_vs_evals_digits")
    assert [(x["_file"], x.get("every")) for x in fronts] == [
        ("accuracy_vs_evals_digits_a.json", 1),
        ("accuracy_vs_evals_digits_b.json", 50),
    ]
    assert "(one image in 50 of the split)" in "\n".join(report._front("digits", fronts[1]))
