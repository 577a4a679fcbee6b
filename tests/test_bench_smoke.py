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
    p = subprocess.run([sys.executable, "-m", "bench.kernels", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "make_noisy" in p.stdout and "query_errors" in p.stdout and "copy bandwidth" in p.stdout
