"""kill -9 at any point of ``eval --out``, then a resume, gives exactly the rows of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# max-inflight 1: rows appear one at a time, so the kills land between rows 1, 2, 3
ARGS = [
    "eval",
    "--limit",
    "5",
    "--policy",
    "exhaustive",
    "--n-grid",
    "5",
    "--max-inflight",
    "1",
    "--batch-size",
    "64",
    "--no-cache",
]
SAME = (
    "id",
    "config",
    "true_label",
    "correct",
    "label",
    "label_index",
    "top",
    "mean_errors",
    "n_scores",
    "evaluations",
)


def _cmd(out):
    return [sys.executable, "-m", "diffcls_fast.cli", *ARGS, "--out", str(out), "--json"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _rows(path):
    return {r["id"]: {k: r[k] for k in SAME} for r in map(json.loads, path.read_text().splitlines())}


def _lines(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_until(out, n_rows, timeout=300):
    """Start an eval on ``out`` and SIGKILL it as soon as the file holds ``n_rows`` rows."""
    proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while _lines(out) < n_rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref.jsonl"
    reference = subprocess.Popen(
        _cmd(ref), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )  # alongside
    try:
        out = tmp_path / "killed.jsonl"
        for n in (1, 2, 3):  # each run resumes the last one's rows and is killed after one more
            _run_until(out, n)
            assert _lines(out) >= n, f"no row {n} within the time limit (a starved machine?)"
        last = subprocess.run(_cmd(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert last.returncode == 0, last.stderr
        summary = json.loads(last.stdout.splitlines()[-1])
        assert summary["images"] == 5 and summary["resumed"] >= 3
        assert reference.wait(timeout=300) == 0, reference.stderr.read()
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    want = _rows(ref)
    assert len(want) == 5
    assert len(out.read_text().splitlines()) == 5  # no image written twice
    assert _rows(out) == want  # bit for bit: floats round-trip exactly through JSON
