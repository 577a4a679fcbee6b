"""The C++ helpers the runner's equality rests on, against their Python originals.

SHA-256 (the image key) vs hashlib, SeedSequence + PCG64 (the timestep draws) vs numpy,
pairwise summation (means) vs numpy, the Student-t CDF vs scipy.special.stdtr, and the
paired t-test p-values vs engine/policies/ttest.py.
"""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from scipy.special import betainc, stdtr

from diffcls_fast.engine.policies.ttest import paired_t_pvalues


def selftest(build, lines: list[str]) -> list[str]:
    r = subprocess.run(
        [str(build / "diffcls-selftest")], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == len(lines)
    return out


def test_sha256_matches_hashlib(native_build):
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 256, 1000)]
    out = selftest(native_build, ["sha256 " + b.hex() for b in blobs])
    assert out == [hashlib.sha256(b).hexdigest() for b in blobs]


def test_numpy_default_rng_random_bit_for_bit(native_build):
    # The entropy lists the noise bank uses: [seed, key & 0xFFFFFFFF, key >> 32, sample, stream], with
    # seeds below and above 2**32 (one and two words) and the rotation's sample 0x7FFFFFFF.
    rng = np.random.default_rng(1)
    cases = [
        [0, 0, 0, 0, 1],
        [0, 1, 2, 3, 1],
        [0, 123, 456, 0x7FFFFFFF, 1],
        [2**32 - 1, 2**32 - 1, 2**31 - 1, 1999, 1],
        [2**40 + 5, 7, 9, 11, 1],
        [2**64 - 1, 1, 2, 3, 0],
    ]
    cases += [
        [
            int(rng.integers(0, 2**32)),
            int(rng.integers(0, 2**32)),
            int(rng.integers(0, 2**31)),
            int(rng.integers(0, 5000)),
            1,
        ]
        for _ in range(40)
    ]
    out = selftest(native_build, ["rng " + " ".join(map(str, e)) for e in cases])
    assert [float(v) for v in out] == [np.random.default_rng(e).random() for e in cases]


def test_pairwise_sum_bit_for_bit(native_build):
    rng = np.random.default_rng(2)
    rows = [
        rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)
        for n in (1, 2, 7, 8, 9, 16, 127, 128, 129, 300, 1000, 2000)
    ]
    out = selftest(native_build, ["pairwise " + " ".join(repr(float(x)) for x in r) for r in rows])
    assert [float(v) for v in out] == [float(np.add.reduce(r)) for r in rows]


def _exact_t_cdf(df: int, t: float) -> float:
    """The Student-t CDF to 50 digits (mpmath, a dependency of torch through sympy)."""
    import mpmath

    with mpmath.workdps(50):
        tt = mpmath.mpf(t)
        tail = mpmath.betainc(mpmath.mpf(df) / 2, mpmath.mpf(1) / 2, 0, df / (df + tt * tt), regularized=True) / 2
        return float(tail if tt < 0 else 1 - tail)


def test_student_t_cdf_matches_exact_and_scipy(native_build):
    grid = [
        (df, t)
        for df in (1, 2, 3, 4, 5, 9, 19, 20, 21, 50, 99, 199, 500, 1999)
        for t in (-1e8, -300.0, -40.0, -12.0, -6.5, -3.3, -2.0, -1.0, -0.5, -1e-3, 1e-6, 0.7, 2.5, 9.0)
    ]
    out = np.array([float(v) for v in selftest(native_build, [f"stdtr {df} {t!r}" for df, t in grid])])
    exact = np.array([_exact_t_cdf(df, t) for df, t in grid])
    ok = exact > 1e-290  # the far tail underflows (in scipy too); checked separately below
    np.testing.assert_allclose(out[ok], exact[ok], rtol=1e-12, atol=0)
    assert np.all(out[~ok] < 1e-280)
    # scipy.special.stdtr itself is off by up to ~3e-11 relative near t = 0 (df = 1, t = 1e-6:
    # 0.50000031832403 vs 1/2 + atan(t)/pi = 0.50000031830989); elsewhere it agrees to 1e-12.
    want = np.array([stdtr(df, t) for df, t in grid])
    np.testing.assert_allclose(out[ok], want[ok], rtol=1e-10, atol=0)
    lower = ok & (np.array([t for _, t in grid]) <= -1e-3)  # where the p-values live
    np.testing.assert_allclose(out[lower], want[lower], rtol=1e-12, atol=0)


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (10.0, 0.5), (999.5, 0.5), (2.0, 3.0), (30.0, 40.0)])
def test_incomplete_beta_matches_exact_and_scipy(native_build, a, b):
    xs = [1e-12, 1e-4, 0.01, 0.2, 0.5, 0.8, 0.99, 0.999, 1 - 1e-9]
    import mpmath

    out = [float(v) for v in selftest(native_build, [f"ibeta {a} {b} {x!r}" for x in xs])]
    with mpmath.workdps(50):
        exact = [float(mpmath.betainc(a, b, 0, x, regularized=True)) for x in xs]
    np.testing.assert_allclose(out, exact, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        out, [betainc(a, b, x) for x in xs], rtol=1e-10, atol=1e-300
    )  # scipy: ~1e-12 off near x = 1


def test_paired_t_pvalues_match_the_policy(native_build):
    rng = np.random.default_rng(3)
    lines, want = [], []
    for _ in range(40):
        k, n, sides = int(rng.integers(1, 11)), int(rng.integers(2, 400)), int(rng.integers(1, 3))
        d = rng.standard_normal((k, n)) * 0.02 + rng.standard_normal((k, 1)) * 0.004
        d[0] = 0.0  # the best class against itself
        if k > 2:
            d[1] = 0.25  # a constant non-zero difference (p = 0)
        lines.append(f"pvals {sides} {k} {n} " + " ".join(repr(float(x)) for x in d.ravel()))
        want.append(paired_t_pvalues(d, sides))
    for line, w in zip(selftest(native_build, lines), want):
        got = np.array([float(v) for v in line.split()])
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-300)
