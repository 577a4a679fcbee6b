"""Keep the benchmark scripts alive in CI (tiny sizes; timings are not checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_bench_smoke():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # The bench runs under the interpreter; ask a fresh process whether it can (the variable must be set
    # before the kernels are imported, which this process may already have done compiled on a GPU).
    probe = "from diffcls_fast.kernels.dispatch import interpreter_problem; print(interpreter_problem() or '')"
    why = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stdout.strip()
    if why:
        pytest.skip(why)
    p = subprocess.run([sys.executable, "-m", "bench.kernels", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "make_noisy" in p.stdout and "query_errors" in p.stdout and "copy bandwidth" in p.stdout


def test_accuracy_vs_evals_runs_in_parts_and_resumes(tmp_path):
    """A long front is run in parts: --only picks and orders configurations, --resume keeps the rows
    already in --results-dir/<tag>.json, and every row says where it ran."""
    import json

    def run(*only):
        cmd = [sys.executable, "-m", "bench.accuracy_vs_evals", "--model", "numbers", "--limit", "2", "--tag", "t", "--results-dir", str(tmp_path), "--resume", "--no-plot", "--only", *only]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    out = run("halving 1 3 7 / 10 3 1", "exhaustive-5")  # exact names: not also exhaustive-50
    assert out.index("halving 1 3 7 / 10 3 1") < out.index("exhaustive-5 ") and "exhaustive-50" not in out
    out = run("exhaustive-5", "halving 1 3 7 / 20 5 1")
    assert "exhaustive-5                       (resumed)" in out and "halving 1 3 7 / 20 5 1" in out
    d = json.loads((tmp_path / "accuracy_vs_evals_t.json").read_text())
    assert [r["name"] for r in d["results"]] == ["halving 1 3 7 / 10 3 1", "exhaustive-5", "halving 1 3 7 / 20 5 1"]
    assert d["images"] == 2 and all(r["backend"] == "torch" and r["dtype"] == "float32" and r["device"] for r in d["results"])
    assert d["results"][1]["evals_per_image"] == 500.0
    assert (tmp_path / "per_image" / "accuracy_vs_evals_t.npz").is_file()
