"""Session fixtures of the native-runner tests: ONE AOTInductor export of digits and ONE CMake build.

Both are slow on a 2-core CPU (the AOTI compile of the digits UNet takes ~35 s alone, ~95 s on a
busy machine; the C++ build ~40-60 s), so every test here shares them. The build needs cmake and a
C++ compiler from the system (CI machines have them; see csrc/README.md); without
them the C++ tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT_BATCH = 32  # one package, dynamic batch 2..32: one compile for the whole session
TIMINGS: dict[str, float] = {}


# One intra-op thread in the classifying subprocesses: on a shared CPU, two OpenMP threads per process
# spin against the other jobs and a 0.1 s image can take seconds (measured: 12 digits 1.9 s with one
# thread, 10.3 s with two, load average 3). Results do not depend on it beyond float32 rounding.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args, timeout=900, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ONE_THREAD,
        **kw,
    )


@pytest.fixture(scope="session")
def aoti_cache(tmp_path_factory) -> Path:
    """The artifact cache the export compiles into (``--backend aoti`` tests reuse its package)."""
    return tmp_path_factory.mktemp("aoti-cache")


@pytest.fixture(scope="session")
def aoti_dir(tmp_path_factory, aoti_cache) -> Path:
    """``diffcls-fast export --format aoti`` of digits (default classes), through the real CLI."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("AOTInductor compiles C++: no c++/g++ on PATH")
    out = tmp_path_factory.mktemp("aoti") / "digits"
    t0 = time.perf_counter()
    r = run_cli(
        "export",
        "--format",
        "aoti",
        "--batch-sizes",
        str(EXPORT_BATCH),
        "--out",
        str(out),
        "--cache-dir",
        str(aoti_cache),
        "--noise-rows",
        "2000",
        env=dict(os.environ),
    )
    TIMINGS["export_seconds"] = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def native_build(tmp_path_factory) -> Path:
    """The top-level CMakeLists.txt built into a temporary folder; returns the build folder."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (apt-get install cmake, or pip install cmake)")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler (c++/g++) on PATH")
    import torch.utils

    build = tmp_path_factory.mktemp("native-build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.perf_counter()
    cfg = subprocess.run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            *gen,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    bld = subprocess.run(
        [cmake, "--build", str(build), "--parallel", "2"], capture_output=True, text=True, timeout=1200
    )
    assert bld.returncode == 0, bld.stdout[-5000:] + bld.stderr[-3000:]
    TIMINGS["build_seconds"] = time.perf_counter() - t0
    assert (build / "diffcls-run").is_file() and (build / "diffcls-selftest").is_file()
    return build


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("native runner: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
