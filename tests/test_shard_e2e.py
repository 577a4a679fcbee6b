"""3 shards (one SIGKILLed and rerun) + merge, and torchrun's ranks, give exactly a single-process eval's rows."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["eval", "--limit", "6", "--policy", "halving", "--no-cache", "--json"]
# Every field of a row that a result decides; `seconds` and `evaluations_spent` (speculation) are run-time figures,
# `shard` says which part a row came from, `total` how many images the run had.
SAME = (
    "id",
    "index",
    "config",
    "settings",
    "true_label",
    "correct",
    "p_true",
    "confidence",
    "label",
    "label_index",
    "top",
    "mean_errors",
    "n_scores",
    "evaluations",
    "error",
    "policy",
)
SAME += ("backend", "device", "dtype", "kernels")


def _cli(*args):
    return [sys.executable, "-m", "diffcls_fast.cli", *args]


def _env():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _rows(path, keys=SAME):
    return {r["id"]: {k: r[k] for k in keys} for r in map(json.loads, Path(path).read_text().splitlines())}


def _lines(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "full.jsonl"
    p = subprocess.run(
        _cli(*ARGS, "--out", str(out)), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr
    return out, json.loads(p.stdout.splitlines()[-1])


def test_three_shards_one_killed_then_merged_equal_one_process(reference, tmp_path):
    ref_out, ref_summary = reference
    out = tmp_path / "r.jsonl"
    # shards 0 and 2 run side by side; shard 1 (max-inflight 1: rows one at a time) is killed after its first row
    others = [
        subprocess.Popen(
            _cli(*ARGS, "--shard", f"{i}/3", "--out", str(out)),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 2)
    ]
    part1 = tmp_path / "r.shard-1-of-3.jsonl"
    victim = subprocess.Popen(
        _cli(*ARGS, "--shard", "1/3", "--max-inflight", "1", "--out", str(out)),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while _lines(part1) < 1 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    killed_with = _lines(part1)
    assert 1 <= killed_with, victim.stderr.read()
    for p in others:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[-1])["shard"] in ("0/3", "2/3")
    rerun = subprocess.run(
        _cli(*ARGS, "--shard", "1/3", "--out", str(out)),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.splitlines()[-1])["resumed"] == killed_with
    parts = sorted(tmp_path.glob("r.shard-*-of-3.jsonl"))
    assert [p.name for p in parts] == [f"r.shard-{i}-of-3.jsonl" for i in range(3)]
    assert [_lines(p) for p in parts] == [2, 2, 2]  # interleaved: 0 3 / 1 4 / 2 5, none written twice

    merged = tmp_path / "merged.jsonl"
    m = subprocess.run(
        _cli("merge", str(merged), *map(str, parts), "--json"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert m.returncode == 0, m.stderr
    summary = json.loads(m.stdout)
    rows = [json.loads(x) for x in merged.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))
    assert [r["id"] for r in rows] == [json.loads(x)["id"] for x in ref_out.read_text().splitlines()]  # split order
    # bit for bit: labels, evaluations and mean errors (floats round-trip exactly through JSON)
    assert _rows(merged) == _rows(ref_out)
    for k in (
        "accuracy",
        "images",
        "evals_per_image",
        "failed",
        "policy",
        "backend",
        "kernels",
        "dtype",
        "model",
        "split",
        "temperature",
        "posterior_floor",
    ):
        assert summary[k] == ref_summary[k], k
    assert summary["ece"] == pytest.approx(ref_summary["ece"], abs=1e-5) and summary["nll"] == pytest.approx(
        ref_summary["nll"], abs=1e-5
    )


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_ranks_are_shards(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "t.jsonl"
    cmd = [
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "diffcls_fast.cli",
        *ARGS,
        "--limit",
        "4",
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    shards = sorted(json.loads(line)["shard"] for line in p.stdout.splitlines() if line.startswith("{"))
    assert shards == ["0/2", "1/2"]
    parts = [tmp_path / f"t.shard-{i}-of-2.jsonl" for i in range(2)]
    merged = tmp_path / "m.jsonl"
    m = subprocess.run(
        _cli("merge", str(merged), *map(str, parts)), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert m.returncode == 0 and "accuracy" in m.stdout, m.stderr
    want = _rows(ref_out)
    got = _rows(merged)
    assert len(got) == 4 and got == {k: want[k] for k in got}  # the first 4 images of the split, as in the 6-image run
