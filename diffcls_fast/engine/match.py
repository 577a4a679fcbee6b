"""Image-text matching with shared noise (Li et al.'s and Clark & Jaini's Winoground experiments).

Matching is classification run sideways: the captions are the "classes" (a
:class:`ClassSpec` of prompts, so their embeddings come from the cache), each
image scores its captions exhaustively on Li et al.'s ``n_grid``-point timestep
grid, and the engine's scheduler and runner do the work, batching across images.
An image's captions are scored on the same (t, eps) samples, the ones ``classify``
uses for that image and seed, so ``match`` and an exhaustive ``classify`` give the
same numbers.

A :class:`MatchPlan` turns groups of (images, captions) (e.g. Winoground's 2x2
groups) into one engine request, in which each image scores only its own group's
captions, and turns the images' results back into one :class:`MatchResult` per
group. :func:`iter_match_groups` runs a plan on an engine; the server admits the
same plan's request into its running engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import UserError
from ..images import image_list
from .core import Engine
from .options import RequestOptions, check_noise_rows
from .policies import PolicyConfig
from .policies.stages import StagedPolicy
from .prompts import ClassSpec
from .results import ClassificationResult, RunStats
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
    failures: list[str | None] = field(
        default_factory=list
    )  # per image: why it failed (a NaN/inf score; its row is NaN), or None

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
            raise ValueError(
                f"Winoground scores need 2 images x 2 captions, got {self.errors.shape[0]} x {self.errors.shape[1]}"
            )
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


@dataclass(frozen=True)
class CaptionSubsets:
    """The policy factory of a match request: image ``index`` scores the classes ``subsets[index]``."""

    n_grid: int
    subsets: tuple[np.ndarray, ...]

    def make(self, index: int, n_classes: int, T: int, bank, key: int, cost: np.ndarray | None) -> CaptionSubsetPolicy:
        return CaptionSubsetPolicy(n_classes, T, self.n_grid, self.subsets[index], cost)

    def describe(self) -> str:
        return PolicyConfig(name="exhaustive", n_grid=self.n_grid).describe()


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


def check_n_grid(n_grid: Any, T: int, options: RequestOptions | None = None) -> int:
    """``n_grid`` as an int, checked against T and (``options``) the rows of a saved noise tensor."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)):
        raise UserError(f"n_grid must be an integer, got {n_grid!r}")
    cfg = PolicyConfig(name="exhaustive", n_grid=int(n_grid))
    try:
        cfg.validate(T)
    except ValueError as e:
        raise UserError(f"n_grid: {e}") from None
    if options is not None and options.bank.saved is not None:
        check_noise_rows(options.bank.saved.shape[0], cfg, T)
    return int(n_grid)


UNSCORED = "\x00unscored"  # a second class no image scores: a lone caption still runs the model


@dataclass
class MatchPlan:
    """Groups of (images, captions) as one engine request, and its results as one MatchResult per group.

    Identical captions (within or across groups) are one class: one embedding, and within an
    image one score per sample. Image k of the request is image ``k - first[g]`` of group
    ``owner[k]`` and scores the classes ``subsets[k]``.
    """

    captions: list[list[str]]  # per group, as given
    n_grid: int
    shared_noise: bool
    spec: ClassSpec = field(init=False)
    cols: list[np.ndarray] = field(init=False)  # per group: caption j -> class
    subsets: list[np.ndarray] = field(init=False)
    owner: list[int] = field(init=False)
    first: list[int] = field(init=False)
    sizes: list[int] = field(init=False)

    @classmethod
    def build(cls, caption_lists: Sequence[Any], image_counts: Sequence[int], n_grid: int, shared_noise: bool):
        plan = cls([check_captions(caps) for caps in caption_lists], n_grid, shared_noise)
        distinct: dict[str, int] = {}
        for caps in plan.captions:
            for c in caps:
                distinct.setdefault(c, len(distinct))
        names = list(distinct)
        class_prompts = [np.array([k]) for k in range(len(names))]
        if len(names) == 1:
            # A lone class is answered without running the model; a second class that no image
            # ever scores (sharing the caption's embedding) keeps the engine running.
            names.append(UNSCORED)
            class_prompts.append(np.array([0]))
        plan.spec = ClassSpec(names, list(distinct), class_prompts)
        plan.cols = [np.array([distinct[c] for c in caps], dtype=np.int64) for caps in plan.captions]
        plan.subsets, plan.owner, plan.first, plan.sizes = [], [], [], list(image_counts)
        for g, n in enumerate(plan.sizes):
            plan.first.append(len(plan.subsets))
            plan.subsets += [np.unique(plan.cols[g])] * n
            plan.owner += [g] * n
        return plan

    @property
    def policy(self) -> str:
        return PolicyConfig(name="exhaustive", n_grid=self.n_grid).describe()

    def options(self, base: RequestOptions) -> RequestOptions:
        """The request's options: ``base``'s noise (shared across images if asked), the plan's
        policy, and captions that encode alike allowed (no pruning: they just score alike)."""
        bank = base.bank.shared_across_images() if self.shared_noise else base.bank
        policy = CaptionSubsets(self.n_grid, tuple(self.subsets))
        return replace(base, policy=policy, bank=bank, distinct_classes=False)

    def result(self, g: int, results: Sequence[ClassificationResult]) -> MatchResult:
        """Group ``g``'s MatchResult from its images' results (in the group's image order)."""
        caps = self.captions[g]
        if not results:
            return MatchResult(np.zeros((0, len(caps))), caps, self.n_grid, 0, 0.0, self.shared_noise, self.policy)
        errors = np.stack([r.mean_errors[self.cols[g]] for r in results]).astype(np.float64)
        errors[[r.error is not None for r in results]] = np.nan  # a failed image has no scores
        return MatchResult(
            errors=errors,
            captions=caps,
            n_grid=self.n_grid,
            evaluations=int(sum(r.evaluations_spent for r in results)),
            seconds=float(max(r.seconds for r in results)),
            shared_noise=self.shared_noise,
            policy=self.policy,
            failures=[r.error for r in results],
        )


def iter_match_groups(
    engine: Engine,
    groups: Sequence[tuple[Any, Sequence[str]]],
    *,
    n_grid: int,
    shared_noise: bool = False,
    progress: Any = None,
    stats: RunStats | None = None,
    on_warning: Any = None,
) -> Iterator[tuple[int, MatchResult]]:
    """Run groups of ``(images, captions)`` as one request on ``engine`` (its default options give
    the noise); yield ``(group index, MatchResult)`` as groups finish. ``on_warning(sentence)``
    hears the words of the captions the tokenizer does not know."""
    base = engine.options
    n_grid = check_n_grid(n_grid, engine.model.num_timesteps, base)
    caption_lists = [caps for _, caps in groups]
    images = [image_list(ims) for ims, _ in groups]
    plan = MatchPlan.build(caption_lists, [len(ims) for ims in images], n_grid, shared_noise)
    flat = [im for ims in images for im in ims]
    rows: list[list[Any]] = [[None] * n for n in plan.sizes]
    remaining = list(plan.sizes)
    for g in [g for g, n in enumerate(plan.sizes) if n == 0]:
        yield g, plan.result(g, [])
    if not flat:
        return
    for k, r in engine.run(flat, plan.spec, plan.options(base), stats=stats, progress=progress, on_warning=on_warning):
        g = plan.owner[k]
        rows[g][k - plan.first[g]] = r
        remaining[g] -= 1
        if remaining[g] == 0:
            yield g, plan.result(g, rows[g])
            rows[g] = []


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
