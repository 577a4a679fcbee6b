"""Image-text matching with shared noise (Li et al.'s and Clark & Jaini's Winoground experiments).

``match(clf, images, captions)`` scores every caption on every image and
returns the matrix of mean errors. It is classification run sideways: the
captions are the "classes" (a :class:`ClassSpec` of prompts, so their
embeddings come from the cache), each image scores every caption exhaustively
on Li et al.'s ``n_grid``-point timestep grid, and the classifier's own
scheduler and runner do the work, batching across images. An image's captions
are scored on the same (t, eps) samples, the ones ``classify`` uses for that
image and seed, so ``match`` and an exhaustive ``classify`` give the same
numbers.

:func:`iter_match_groups` runs many small groups (each its own images and
captions, e.g. Winoground's 2x2 groups) in one engine run: each image scores
only its own group's captions, and a group is yielded once its images finish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .classifier import DiffusionClassifier, ImageLike, _image_stream
from .noise import NoiseBank
from .policies import PolicyConfig
from .policies.stages import StagedPolicy
from .prompts import ClassSpec
from .winoground import WinogroundScores, winoground_from_errors


@dataclass
class MatchResult:
    """The mean errors of every (image, caption) pair of one run or group.

    ``errors[i, j]`` is image i's mean denoising error under caption j over the
    ``n_grid`` grid timesteps (lower = better match); ``scores`` is ``-errors``.
    """

    errors: np.ndarray  # float64 [n_images, n_captions]
    captions: list[str]
    n_grid: int
    evaluations: int  # denoiser rows spent: n_images * n_distinct_captions * n_grid
    seconds: float  # wall time of match(); for a group, the latency of its slowest image
    shared_noise: bool = False  # True: one set of (t, eps) samples for every image, not one per image
    policy: str = ""
    failures: list[str | None] = field(default_factory=list)  # per image: why it failed (a NaN/inf score; its row is NaN), or None

    @property
    def failed(self) -> int:
        return sum(f is not None for f in self.failures)

    @property
    def scores(self) -> np.ndarray:
        return -self.errors

    def best_caption(self) -> np.ndarray:
        """Per image, the index of its best caption (ties go to the lower index)."""
        return np.argmin(self.errors, axis=1)

    def best_image(self) -> np.ndarray:
        """Per caption, the index of its best image."""
        return np.argmin(self.errors, axis=0)

    def winoground(self) -> WinogroundScores:
        """Text, image and group scores; needs 2 images x 2 captions (caption j describes image j)."""
        if self.errors.shape != (2, 2):
            raise ValueError(f"Winoground scores need 2 images x 2 captions, got {self.errors.shape[0]} x {self.errors.shape[1]}")
        return winoground_from_errors(self.errors)

    def to_dict(self) -> dict:
        d = {
            "captions": list(self.captions),
            "errors": [[float(e) if np.isfinite(e) else None for e in row] for row in self.errors],  # strict JSON
            "n_grid": self.n_grid,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 4),
            "shared_noise": self.shared_noise,
            "policy": self.policy,
        }
        if self.failed:
            d["failures"] = list(self.failures)
        if self.errors.shape == (2, 2):
            d["winoground"] = self.winoground().to_dict()
        return d


class CaptionSubsetPolicy(StagedPolicy):
    """Exhaustive scoring of a subset of the classes (an image's own captions) on an n-point grid.

    With every class in the subset this is exactly :func:`exhaustive`.
    """

    name = "exhaustive"

    def __init__(self, n_classes: int, T: int, n_grid: int, subset: np.ndarray, cost: np.ndarray | None = None):
        self._subset = np.sort(np.asarray(subset, dtype=np.int64))
        super().__init__(n_classes, T, [n_grid], [1], cost)

    def _open_stage(self) -> None:
        if self.stage == 0:
            self.alive = self._subset
        super()._open_stage()


class SharedNoiseBank(NoiseBank):
    """A view of a noise bank in which every image draws sample i from one key: noise shared across images."""

    def __init__(self, bank: NoiseBank):  # noqa: D107 - shares the bank's seed and saved noise
        self.__dict__.update(bank.__dict__)

    def noise(self, key: int, i: int) -> torch.Tensor:
        return super().noise(0, i)

    def uniform(self, key: int, i: int) -> float:
        return super().uniform(0, i)


class _Matcher(DiffusionClassifier):
    """A view of a classifier (same model, cache, buckets, seed) whose image ``k`` scores the classes ``subsets[k]``."""

    def __init__(self, base: DiffusionClassifier, n_grid: int, subsets: list[np.ndarray], shared_noise: bool):  # noqa: D107
        self.__dict__.update(base.__dict__)
        self.policy_cfg = PolicyConfig(name="exhaustive", n_grid=n_grid)
        if shared_noise:
            self.bank = SharedNoiseBank(base.bank)
        self._subsets = subsets

    def _check_distinct(self, spec: ClassSpec, cond: torch.Tensor, unknown=None) -> None:
        """Captions that encode alike are allowed here: no pruning, they just score alike (the
        unknown-word warning still names them)."""

    def _new_policy(self, index: int, n_classes: int, key: int, cost: np.ndarray):
        return CaptionSubsetPolicy(n_classes, self.model.num_timesteps, self.policy_cfg.n_grid, self._subsets[index], cost)


def check_captions(captions: Any) -> list[str]:
    """A non-empty list of non-blank caption strings (duplicates allowed)."""
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise UserError("captions must be a list of strings, e.g. ['a cat', 'a dog']")
    caps = list(captions)
    if not caps:
        raise UserError("the caption list is empty")
    for k, c in enumerate(caps):
        if not isinstance(c, str):
            raise UserError(f"caption {k} is not a string: {c!r}")
        if not c.strip():
            raise UserError(f"caption {k} is empty")
    return caps


def _check_n_grid(n_grid: int, T: int, bank=None) -> int:
    """``n_grid`` as an int, checked against T and (``bank``) the rows of a saved noise tensor."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)):
        raise UserError(f"n_grid must be an integer, got {n_grid!r}")
    cfg = PolicyConfig(name="exhaustive", n_grid=int(n_grid))
    try:
        cfg.validate(T)
    except ValueError as e:
        raise UserError(f"n_grid: {e}") from None
    if bank is not None:
        from .classifier import _check_noise_rows

        _check_noise_rows(bank, cfg, T)
    return int(n_grid)


def iter_match_groups(
    clf: DiffusionClassifier,
    groups: Sequence[tuple[Sequence[ImageLike], Sequence[str]]],
    *,
    n_grid: int | None = None,
    shared_noise: bool = False,
    progress: Any = None,
) -> Iterator[tuple[int, MatchResult]]:
    """Yield ``(group index, MatchResult)`` as groups finish; groups are ``(images, captions)``.

    One engine run for all groups: images of every group share the batches, and
    each image scores only its own group's captions. Identical captions (within
    or across groups) are one class: one embedding, and within an image one
    score per sample.
    """
    n_grid = _check_n_grid(clf.policy_cfg.n_grid if n_grid is None else n_grid, clf.model.num_timesteps, clf.bank)
    caption_lists = [check_captions(caps) for _, caps in groups]
    distinct: dict[str, int] = {}
    for caps in caption_lists:
        for c in caps:
            distinct.setdefault(c, len(distinct))
    names = list(distinct)
    class_prompts = [np.array([k]) for k in range(len(names))]
    if len(names) == 1:
        # The classifier answers a lone class without running the model; a second class that no
        # image ever scores (sharing the caption's embedding) keeps the engine running.
        names.append("\x00unscored")
        class_prompts.append(np.array([0]))
    spec = ClassSpec(names, list(distinct), class_prompts)

    # Flatten: image k of the run is image k - first[g] of group owner[k], scoring classes subsets[k].
    cols = [np.array([distinct[c] for c in caps], dtype=np.int64) for caps in caption_lists]
    flat: list[ImageLike] = []
    subsets: list[np.ndarray] = []
    owner: list[int] = []
    first: list[int] = []
    remaining: list[int] = []  # images of each group not yet finished
    for g, (images, _) in enumerate(groups):
        images = _as_list(images)
        first.append(len(flat))
        remaining.append(len(images))
        flat += images
        subsets += [np.unique(cols[g])] * len(images)
        owner += [g] * len(images)
    rows: list[list[Any]] = [[None] * r for r in remaining]
    policy = PolicyConfig(name="exhaustive", n_grid=n_grid).describe()
    for g in [g for g, r in enumerate(remaining) if r == 0]:
        yield g, MatchResult(np.zeros((0, len(caption_lists[g]))), caption_lists[g], n_grid, 0, 0.0, shared_noise, policy)
    if not flat:
        return
    matcher = _Matcher(clf, n_grid, subsets, shared_noise)
    try:
        for k, r in matcher.classify_iter(flat, spec, progress=progress):
            g = owner[k]
            rows[g][k - first[g]] = r
            remaining[g] -= 1
            if remaining[g] == 0:
                res = rows[g]
                errors = np.stack([rr.mean_errors[cols[g]] for rr in res]).astype(np.float64)
                errors[[rr.error is not None for rr in res]] = np.nan  # a failed image has no scores
                yield (
                    g,
                    MatchResult(
                        errors=errors,
                        captions=caption_lists[g],
                        n_grid=n_grid,
                        evaluations=int(sum(rr.evaluations_spent for rr in res)),
                        seconds=float(max(rr.seconds for rr in res)),
                        shared_noise=shared_noise,
                        policy=policy,
                        failures=[rr.error for rr in res],
                    ),
                )
                rows[g] = []
    finally:
        clf.last_stats = matcher.last_stats


def match(
    clf: DiffusionClassifier,
    images: Sequence[ImageLike] | ImageLike,
    captions: Sequence[str],
    *,
    n_grid: int | None = None,
    shared_noise: bool = False,
    progress: Any = None,
) -> MatchResult:
    """The mean error of every (image, caption) pair; see :meth:`DiffusionClassifier.match`."""
    t0 = time.perf_counter()
    (_, res), *_ = list(iter_match_groups(clf, [(_as_list(images), captions)], n_grid=n_grid, shared_noise=shared_noise, progress=progress))
    res.seconds = time.perf_counter() - t0
    return res


def _as_list(images: Sequence[ImageLike] | ImageLike) -> list[ImageLike]:
    # classify's rule, so that one image is one image to both (a 3-D array is an image, not its rows)
    return list(_image_stream(images))


def format_matrix(result: MatchResult, image_names: Sequence[str]) -> list[str]:
    """The error matrix as text: a caption legend, then one row per image (errors, best caption)."""
    n_cap = len(result.captions)
    lines = [f"# c{j} = {c!r}" for j, c in enumerate(result.captions)]
    width = max([5, *(len(str(n)) for n in image_names)])
    head = "".join(f"{f'c{j}':>12}" for j in range(n_cap))
    lines.append(f"{'image':<{width}}{head}   best")
    best = result.best_caption() if len(result.errors) else []
    failures = result.failures or [None] * len(result.errors)
    for name, row, b, fail in zip(image_names, result.errors, best, failures):
        if fail is not None:
            lines.append(f"{str(name):<{width}}  failed: {fail}")
            continue
        cells = "".join(f"{e:12.6f}" for e in row)
        lines.append(f"{str(name):<{width}}{cells}   c{b}")
    return lines
