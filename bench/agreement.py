"""Do two runs of the classifier agree, up to the numerics of their dtype and device?

Used by the CUDA tests (engine on CUDA vs CPU, compile vs eager, xformers vs SDPA)
and by ``bench.gpu`` (engine vs the reference loop). Two runs must reach the
same label on every image whose decision is clear; an image whose best two
classes are closer than the runs' numerical tolerance may flip, and is
reported rather than failed. Per-class mean errors must agree within the
tolerance on every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Tolerances on per-class mean errors between a run and its fp32 CPU reference. Measured on the
# bundled digits model on the CPU (100 held-out images, exhaustive n_grid=5, 2026-12-01): bf16 vs
# fp32 differ by up to 8.7e-3 relative, fp16 vs fp32 by 6.6e-4 (the CPU convolves fp16 in fp32; a
# GPU keeps fp16 activations, hence the wider bound). fp32 on a GPU with TF32 off differs from the
# CPU by summation order only. Not yet measured on a GPU: bench.gpu's CUDA tests will tell.
DTYPE_RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}


@dataclass
class Agreement:
    """The comparison of run b against run a (the reference), image by image."""

    images: int
    same_labels: int
    rtol: float
    atol: float
    # images whose labels differ although a's decision margin is above the tolerance: real disagreements
    confident_mismatches: list[int] = field(default_factory=list)
    # images whose labels differ within the tolerance (a near-tie in run a): allowed, reported
    tie_flips: list[int] = field(default_factory=list)
    # images with a per-class mean error outside rtol/atol
    error_mismatches: list[int] = field(default_factory=list)
    max_rel_error_diff: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.confident_mismatches and not self.error_mismatches

    def describe(self) -> str:
        s = (
            f"{self.same_labels}/{self.images} same labels, max relative error difference {self.max_rel_error_diff:.2e}"
            f" (rtol {self.rtol:g})"
        )
        if self.tie_flips:
            s += f"; {len(self.tie_flips)} near-tie flip(s) at images {self.tie_flips[:8]}"
        if self.confident_mismatches:
            s += f"; CONFIDENT LABEL MISMATCHES at images {self.confident_mismatches[:8]}"
        if self.error_mismatches:
            s += f"; errors out of tolerance at images {self.error_mismatches[:8]}"
        return s

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "same_labels": self.same_labels,
            "rtol": self.rtol,
            "atol": self.atol,
            "confident_mismatches": self.confident_mismatches,
            "tie_flips": self.tie_flips,
            "error_mismatches": self.error_mismatches,
            "max_rel_error_diff": self.max_rel_error_diff,
            "ok": self.ok,
        }


def margin(errors: np.ndarray) -> float:
    """Relative gap between the best and the second-best class's mean error (inf with one class)."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    if e.size < 2:
        return float("inf")
    return float((e[1] - e[0]) / max(abs(e[1]), 1e-30))


def compare_runs(
    labels_a: Sequence[int],
    errors_a: Sequence[np.ndarray] | None,
    labels_b: Sequence[int],
    errors_b: Sequence[np.ndarray] | None,
    rtol: float,
    atol: float = 1e-6,
) -> Agreement:
    """Compare run b with run a. ``errors_*`` are per-image arrays of per-class mean errors (NaN where
    a class was never scored, e.g. pruned by a policy); without them only labels are compared and every
    label difference counts as a confident mismatch."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"runs cover different numbers of images: {len(labels_a)} and {len(labels_b)}")
    if (errors_a is None) != (errors_b is None):
        raise ValueError("pass errors for both runs or for neither")
    ag = Agreement(images=len(labels_a), same_labels=0, rtol=rtol, atol=atol)
    for i, (la, lb) in enumerate(zip(labels_a, labels_b)):
        if errors_a is not None:
            ea, eb = np.asarray(errors_a[i], np.float64), np.asarray(errors_b[i], np.float64)
            if ea.shape != eb.shape:
                raise ValueError(f"image {i}: error arrays of shapes {ea.shape} and {eb.shape}")
            both = np.isfinite(ea) & np.isfinite(eb)
            if not np.array_equal(np.isnan(ea), np.isnan(eb)) or not np.all(
                np.abs(ea[both] - eb[both]) <= atol + rtol * np.abs(ea[both])
            ):
                ag.error_mismatches.append(i)
            if both.any():
                rel = np.abs(ea[both] - eb[both]) / np.maximum(np.abs(ea[both]), 1e-30)
                ag.max_rel_error_diff = max(ag.max_rel_error_diff, float(rel.max()))
        if la == lb:
            ag.same_labels += 1
        elif errors_a is not None and margin(np.asarray(errors_a[i])[np.isfinite(errors_a[i])]) <= 2 * rtol:
            # The two best classes of run a are within twice the tolerance: either may win in run b.
            ag.tie_flips.append(i)
        else:
            ag.confident_mismatches.append(i)
    return ag


def compare_results(a: Sequence, b: Sequence, rtol: float, atol: float = 1e-6) -> Agreement:
    """:func:`compare_runs` on two lists of :class:`ClassificationResult`."""
    return compare_runs(
        [r.label for r in a], [r.mean_errors for r in a], [r.label for r in b], [r.mean_errors for r in b], rtol, atol
    )
