"""The Python API: ``DiffusionClassifier(model, policy=...).classify(images, classes)``.

A thin facade over the engine (:mod:`.core`): it holds a model, the engine's settings
(:class:`EngineConfig`) and default request options (:class:`RequestOptions`), and every
call runs one request through an :class:`Engine`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DiffclsWarning
from ..images import image_list
from ..models.bundle import ModelBundle
from .conditions import Classes, class_spec
from .core import Engine
from .match import MatchResult, iter_match_groups
from .noise import NoiseBank, check_seed
from .options import EngineConfig, RequestOptions, check_option_names
from .policies import PolicyConfig
from .prompts import ClassSpec
from .results import ClassificationResult, RunStats

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


class DiffusionClassifier:
    """A zero-shot classifier from a conditional diffusion model.

    ``model`` is a :class:`ModelBundle` or anything :func:`load_model` takes.
    ``policy`` is ``"ttest"`` (default), ``"halving"``, ``"adaptive"`` or ``"exhaustive"``;
    policy options (``n_grid``, ``n_samples``, ``to_keep``, ``min_scores``,
    ``max_scores``, ``cutoff_pval``, ``sides``, ``t_order``, ``rounds``, ``keep``,
    ``t_band``; see :data:`diffcls_fast.engine.policies.OPTIONS`) are keyword arguments.
    ``temperature`` and ``posterior_floor`` default to the model's calibration for the
    policy (see :mod:`.calibration`). Every result carries ``ood_score`` and
    ``out_of_distribution`` where the model ships an out-of-distribution rule for the policy
    (see :mod:`.ood`); ``abstain_ood=True`` answers no label (``abstained``) for a flagged image.
    """

    def __init__(
        self,
        model: ModelBundle | str = "digits",
        policy: str = "ttest",
        *,
        batch_size: int = 256,
        buckets: Sequence[int] | None = None,
        max_inflight: int = 64,
        seed: int = 0,
        loss: str = "l2",
        temperature: float | None = None,
        posterior_floor: float | None = None,
        speculate: str = "auto",
        overlap: bool | str = "auto",
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        noise: torch.Tensor | None = None,
        abstain_ood: bool = False,
        **policy_options: Any,
    ):
        if isinstance(model, (str, Path)):
            from ..models import load_model

            model = load_model(model)
        check_option_names(policy_options)
        config = EngineConfig.build(
            model,
            batch_size=batch_size,
            buckets=buckets,
            max_inflight=max_inflight,
            speculate=speculate,
            overlap=overlap,
            loss=loss,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
        bank = NoiseBank(model.latent_shape, check_seed(seed), saved=noise)
        options = RequestOptions.build(
            model, loss, bank, policy, policy_options, temperature, posterior_floor, abstain_ood
        )
        self._init(model, config, options)

    def _init(self, model: ModelBundle, config: EngineConfig, options: RequestOptions) -> None:
        self.model = model
        self.config = config
        self.options = options
        self.last_stats = RunStats()

    @classmethod
    def from_parts(cls, model: ModelBundle, config: EngineConfig, options: RequestOptions) -> DiffusionClassifier:
        """A classifier over an existing model, engine settings and request options (nothing re-checked)."""
        clf = cls.__new__(cls)
        clf._init(model, config, options)
        return clf

    # -- what the options are ------------------------------------------------------------
    @property
    def policy_cfg(self) -> PolicyConfig:
        return self.options.policy

    @property
    def seed(self) -> int:
        return self.options.bank.seed

    @property
    def bank(self) -> NoiseBank:
        return self.options.bank

    @property
    def temperature(self) -> float:
        return self.options.temperature

    @property
    def posterior_floor(self) -> float:
        return self.options.posterior_floor

    @property
    def loss(self) -> str:
        return self.config.loss

    @property
    def buckets(self) -> list[int]:
        return list(self.config.buckets)

    def with_options(
        self,
        *,
        policy: str | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        posterior_floor: float | None = None,
        abstain_ood: bool | None = None,
        **policy_options: Any,
    ) -> DiffusionClassifier:
        """A classifier with other per-request options, sharing this one's model and engine settings.

        ``policy`` and policy options override this classifier's (unnamed options keep
        its values); ``seed`` gives another noise bank (a saved noise tensor stays);
        ``temperature`` and ``posterior_floor`` follow the constructor's rule (default:
        the model's calibration for the new policy, unless this classifier was given
        explicit values). ``view.classify(...)`` equals a classifier built with the same
        arguments. The batch size, buckets, in-flight bound, speculation and loss are the
        engine's and stay. ``view.options`` is what an :class:`Engine` admits a request with.
        """
        options = self.options.derive(
            self.model,
            self.loss,
            policy=policy,
            seed=seed,
            temperature=temperature,
            posterior_floor=posterior_floor,
            abstain_ood=abstain_ood,
            **policy_options,
        )
        return DiffusionClassifier.from_parts(self.model, self.config, options)

    def engine(self) -> Engine:
        """A new engine over this classifier's model and settings, admitting requests with its options by default."""
        return Engine(self.model, self.config, self.options)

    # -- classification ------------------------------------------------------------------
    def class_spec(self, classes: Classes) -> ClassSpec:
        """``classes`` as the engine will score them (the model's template applied), checked."""
        return class_spec(self.model, classes, self.config.max_batch)

    def classify(
        self, images: Iterable[ImageLike] | ImageLike, classes: Classes = None, progress: Any = None
    ) -> list[ClassificationResult]:
        """Classify images; results come back in input order.

        ``images`` is one image or any iterable of them (a list, a generator, a
        batch tensor ``[N, C, H, W]``); see :func:`diffcls_fast.images.to_pixels`
        for the accepted forms of one image.
        """
        done = dict(self.classify_iter(images, classes, progress=progress))
        return [done[i] for i in range(len(done))]

    def classify_iter(
        self,
        images: Iterable[ImageLike] | ImageLike,
        classes: Classes = None,
        progress: Any = None,
        chunk: int = 32,
    ) -> Iterator[tuple[int, ClassificationResult]]:
        """Yield ``(input index, result)`` as images finish (not in input order).

        ``images`` is consumed lazily, a chunk at a time, so a generator streams.
        """
        self.last_stats = RunStats()
        # One engine per call (its stats are this call's); the server keeps one engine for all requests.
        yield from self.engine().run(
            image_list(images, lazy=True),
            classes,
            stats=self.last_stats,
            progress=progress,
            chunk=chunk,
            on_warning=_warn,
        )

    # -- image-text matching -------------------------------------------------------------
    def match(
        self,
        images: Sequence[ImageLike] | ImageLike,
        captions: Sequence[str],
        *,
        n_grid: int | None = None,
        shared_noise: bool = False,
        progress: Any = None,
    ) -> MatchResult:
        """Image-text matching: the mean error of every (image, caption) pair, as a :class:`MatchResult`.

        ``result.errors[i, j]`` is the mean denoising error of image i under caption j
        (lower = better match; ``result.scores`` is its negative). Every caption of
        an image is scored on the same (t, eps) samples, exhaustively on Li et al.'s
        ``n_grid``-point timestep grid (default: this classifier's ``n_grid``, 50),
        with the noise ``classify`` would use for that image and seed.
        ``shared_noise=True`` also shares the samples across images. Captions are
        full prompts (no template). See :mod:`diffcls_fast.engine.match`.
        """
        import time

        t0 = time.perf_counter()
        groups = [(image_list(images), captions)]
        ((_, res),) = self.match_groups(groups, n_grid=n_grid, shared_noise=shared_noise, progress=progress)
        res.seconds = time.perf_counter() - t0
        return res

    def match_groups(
        self,
        groups: Sequence[tuple[Sequence[ImageLike], Sequence[str]]],
        *,
        n_grid: int | None = None,
        shared_noise: bool = False,
        progress: Any = None,
    ) -> Iterator[tuple[int, MatchResult]]:
        """Yield ``(group index, MatchResult)`` as groups finish; groups are ``(images, captions)``.

        One engine run for all groups: images of every group share the batches, and each
        image scores only its own group's captions (e.g. Winoground's 2x2 groups).
        """
        self.last_stats = RunStats()
        n_grid = self.policy_cfg.n_grid if n_grid is None else n_grid
        return iter_match_groups(
            self.engine(),
            groups,
            n_grid=n_grid,
            shared_noise=shared_noise,
            progress=progress,
            stats=self.last_stats,
            on_warning=_warn,
        )


def _warn(sentence: str) -> None:
    warnings.warn(DiffclsWarning(sentence), stacklevel=4)
