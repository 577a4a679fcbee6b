"""Result types: one per image, one per run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ood import ood_score


def finalists(n_scores: np.ndarray, label: int) -> np.ndarray:
    """The classes of the policy's last comparison: those scored as often as the label (bool [C]).

    Every policy scores surviving classes on a growing prefix of the same samples
    and prunes a class for good, so these are exactly the classes still
    competing when the label was decided, all scored on the same samples as it.
    A class pruned earlier has fewer scores, and a mean over other (fewer)
    samples is not comparable with the label's.
    """
    n_scores = np.asarray(n_scores)
    return (n_scores == n_scores[label]) & (n_scores > 0)


def posterior(
    mean_errors: np.ndarray, n_scores: np.ndarray, label: int, temperature: float, floor: float = 0.0
) -> np.ndarray:
    """softmax(-mean_error / temperature) over the :func:`finalists`, mixed with a uniform ``floor``.

    ``p = (1 - floor) * softmax_finalists + floor / C``: a class pruned before the
    last comparison gets ``floor / C`` (its mean is over fewer samples, so it is
    not put in the softmax); with ``floor`` 0 it gets 0. The policy picked
    ``label`` as the lowest mean error among the finalists, so the label is the
    posterior's top class by construction, and the probabilities sum to 1.
    (An exhaustive policy has every class among its finalists.) ``temperature``
    and ``floor`` are fitted per model and policy, see :mod:`.calibration`.
    """
    p = np.zeros(len(mean_errors))
    ok = finalists(n_scores, label) & ~np.isnan(mean_errors)
    if not ok.any():
        p[label] = 1.0
    else:
        # distances from the lowest mean first, then the temperature: -mean / T overflows to -inf
        # for a tiny T (1e-310), and -inf - (-inf) would make every probability NaN
        m = mean_errors[ok]
        z = np.exp(-(m - m.min()) / temperature)
        p[ok] = z / z.sum()
    return (1.0 - floor) * p + floor / len(p) if floor else p


@dataclass
class ClassificationResult:
    """One image's answer. A failed image (``error`` set: a non-finite score, an internal error)
    has ``label`` -1, ``label_name`` "", all-zero probabilities and an empty ``top()``; its means,
    counts and evaluations are those of the samples the rule consumed before it failed."""

    label: int
    label_name: str  # "" for a failed image
    class_names: list[str]
    probabilities: np.ndarray  # [C], posterior over the finalists (0 for classes pruned earlier)
    mean_errors: np.ndarray  # [C], NaN where a class was never scored
    n_scores: np.ndarray  # [C], samples in each class's mean
    evaluations: int  # denoiser evaluations the policy's rule needed
    evaluations_spent: int  # evaluations actually run for this image (speculation included)
    seconds: float  # admission to completion (latency inside a batched run)
    policy: str = ""
    error: str | None = None  # why this image failed (a non-finite score, a policy bug); None: it did not
    # The winner's mean error over the model's out-of-distribution threshold (see .ood): above 1, the image is
    # unlike the model's training data. None: the model ships no rule for this policy and loss.
    ood_score: float | None = None
    abstained: bool = False  # the caller asked to abstain on out-of-distribution images, and this is one

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def out_of_distribution(self) -> bool | None:
        """True when the winner's error is above the model's threshold; None when there is no rule."""
        return None if self.ood_score is None else self.ood_score > 1.0

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes; classes pruned earlier (probability 0) follow, the last pruned first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"top(k): k must be an integer >= 0, got {k!r}")
        if self.error is not None:  # a failed image has no ranking
            return []
        mean = np.nan_to_num(self.mean_errors, nan=np.inf)
        order = np.lexsort((mean, -self.n_scores, -self.probabilities))[:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def to_dict(self, top_k: int = 5) -> dict:
        return {
            # an abstention answers no label (null); the best guess stays in label_index and top
            "label": None if self.abstained else self.label_name,
            "label_index": self.label,
            "top": [{"class": n, "p": round(p, 6)} for n, p in self.top(top_k)],
            "mean_errors": {
                n: float(e) if np.isfinite(e) else None for n, e in zip(self.class_names, self.mean_errors)
            },  # strict JSON
            "n_scores": {n: int(c) for n, c in zip(self.class_names, self.n_scores)},
            "evaluations": self.evaluations,
            "evaluations_spent": self.evaluations_spent,
            "seconds": round(self.seconds, 4),
            "policy": self.policy,
            "error": self.error,  # always present (null when the image did not fail): one schema for every row
            "out_of_distribution": self.out_of_distribution,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "abstained": self.abstained,
        }


@dataclass
class RunStats:
    images: int = 0
    evaluations: int = 0  # denoiser rows actually run
    padded_rows: int = 0
    batches: int = 0
    seconds: float = 0.0  # wall time of the scoring loop
    setup_seconds: float = 0.0  # prompt encoding and cache
    backend: str = ""
    kernels: str = ""
    dtype: str = ""
    bucket_counts: dict[int, int] = field(default_factory=dict)

    @property
    def batch_fill(self) -> float:
        tot = self.evaluations + self.padded_rows
        return self.evaluations / tot if tot else 1.0

    @property
    def evals_per_second(self) -> float:
        return self.evaluations / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "evaluations": self.evaluations,
            "padded_rows": self.padded_rows,
            "batches": self.batches,
            "batch_fill": round(self.batch_fill, 4),
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "evals_per_second": round(self.evals_per_second, 1),
            "images_per_second": round(self.images_per_second, 3),
            "backend": self.backend,
            "kernels": self.kernels,
            "dtype": self.dtype,
            "bucket_counts": {str(k): v for k, v in sorted(self.bucket_counts.items())},
        }


def image_result(
    names: list[str],
    outcome,
    spent: int,
    seconds: float,
    policy: str,
    temperature: float,
    floor: float,
    ood_threshold: float | None = None,
    abstain_ood: bool = False,
):
    """An image's :class:`ClassificationResult` from its policy's outcome (None: a one-class request,
    answered without the model; an outcome with a failure: a failed image). ``ood_threshold``: the model's
    out-of-distribution rule for this policy (None: none); ``abstain_ood``: abstain on a flagged image."""
    if outcome is None:
        return ClassificationResult(
            0, names[0], names, np.ones(1), np.full(1, np.nan), np.zeros(1, np.int64), 0, 0, seconds, policy
        )
    if outcome.failure is not None:  # this image failed (a NaN/inf score, or a policy bug); the run goes on
        return failed_result(names, outcome.failure.message(names), outcome, spent, seconds, policy)
    probs = posterior(outcome.mean_errors, outcome.n_scores, outcome.label, temperature, floor)
    score = ood_score(outcome.mean_errors[outcome.label], ood_threshold)
    return ClassificationResult(
        label=outcome.label,
        label_name=names[outcome.label],
        class_names=names,
        probabilities=probs,
        mean_errors=outcome.mean_errors,
        n_scores=outcome.n_scores,
        evaluations=outcome.evaluations,
        evaluations_spent=spent,
        seconds=seconds,
        policy=policy,
        ood_score=score,
        abstained=bool(abstain_ood and score is not None and score > 1.0),
    )


def failed_result(names: list[str], message: str, outcome, spent: int, seconds: float, policy: str):
    """A failed image: no label, no posterior; the means and counts the rule had consumed, the evaluations spent."""
    n = len(names)
    return ClassificationResult(
        label=-1,
        label_name="",
        class_names=names,
        probabilities=np.zeros(n),
        mean_errors=outcome.mean_errors if outcome is not None else np.full(n, np.nan),
        n_scores=outcome.n_scores if outcome is not None else np.zeros(n, np.int64),
        evaluations=outcome.evaluations if outcome is not None else 0,
        evaluations_spent=spent,
        seconds=seconds,
        policy=policy,
        error=message,
    )
