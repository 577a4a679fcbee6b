"""The Python API: ``DiffusionClassifier(model, policy=...).classify(images, classes)``."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import kernels
from ..errors import UserError
from ..images import to_pixels
from ..models.bundle import ModelBundle
from .cache import EmbeddingCache
from .noise import NoiseBank, check_seed, image_key
from .policies import PolicyConfig, make_policy
from .prompts import ClassSpec, parse_class_list
from .results import ClassificationResult, RunStats, posterior
from .runner import ImageState, Runner
from .scheduler import Scheduler, power_of_two_buckets

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
_POLICY_FIELDS = {f.name for f in fields(PolicyConfig)} - {"name"}


class DiffusionClassifier:
    """A zero-shot classifier from a conditional diffusion model.

    ``model`` is a :class:`ModelBundle` or anything :func:`load_model` takes.
    ``policy`` is ``"ttest"`` (default), ``"adaptive"`` or ``"exhaustive"``;
    policy options (``n_grid``, ``n_samples``, ``to_keep``, ``min_scores``,
    ``max_scores``, ``cutoff_pval``, ``sides``, ``t_order``) are keyword arguments.
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
        speculate: str = "auto",
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        noise: torch.Tensor | None = None,
        **policy_options: Any,
    ):
        if isinstance(model, (str, Path)):
            from ..models import load_model

            model = load_model(model)
        self.model = model
        unknown = set(policy_options) - _POLICY_FIELDS
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self.policy_cfg = PolicyConfig(name=policy, **policy_options)
        try:
            self.policy_cfg.validate(model.num_timesteps)
        except ValueError as e:
            raise UserError(str(e)) from None
        for name, value in (("batch_size", batch_size), ("max_inflight", max_inflight), *((f"buckets[{i}]", b) for i, b in enumerate(buckets or []))):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        self.buckets = sorted(buckets) if buckets else power_of_two_buckets(batch_size)
        self.max_inflight = max_inflight
        self.seed = check_seed(seed)
        self.loss = loss
        self.temperature = check_temperature(temperature if temperature is not None else model_default_temperature(model))
        if speculate == "auto":
            # Rows of a batch cost little next to the call itself until the batch is large (GPU, and
            # small models on CPU): with too few images in flight, scoring ahead beats tiny batches.
            # Measured on digits (50 images, CPU): fill 9.3 s vs pad 17.0 s, for 2.6% more evaluations.
            speculate = "fill"
        self.speculate = speculate
        self.bank = NoiseBank(model.latent_shape, self.seed, saved=noise)
        self.cache = EmbeddingCache(cache_dir, embedding_key(model), shape=model.cond_shape) if use_cache and model.cond_kind == "text" else None
        self.last_stats = RunStats()

    # -- classes ------------------------------------------------------------------------
    def class_spec(self, classes: ClassSpec | Sequence[str] | str | None) -> ClassSpec:
        m = self.model
        if classes is None:
            if not m.class_names:
                raise UserError(f"model {m.name} ships no class list; pass classes")
            if m.default_prompts:
                return ClassSpec.from_prompts(m.class_names, m.default_prompts)
            return ClassSpec.from_names(m.class_names, m.prompt_template)
        if isinstance(classes, ClassSpec):
            return classes
        if isinstance(classes, str):
            return parse_class_list(classes, m.prompt_template)
        return ClassSpec.from_names(_class_names(classes), m.prompt_template)

    def _conditions(self, spec: ClassSpec) -> torch.Tensor:
        if self.cache is not None:  # text models only (class ids need no cache)
            return self.cache.get(spec.prompts, self.model.encode_prompts).to(self.model.device, self.model.dtype)
        return self.model.encode_prompts(spec.prompts)

    # -- classification ------------------------------------------------------------------
    def classify(self, images: Iterable[ImageLike] | ImageLike, classes: ClassSpec | Sequence[str] | str | None = None, progress: Any = None) -> list[ClassificationResult]:
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
        classes: ClassSpec | Sequence[str] | str | None = None,
        progress: Any = None,
        chunk: int = 32,
    ) -> Iterator[tuple[int, ClassificationResult]]:
        """Yield ``(input index, result)`` as images finish (not in input order).

        ``images`` is consumed lazily, a chunk at a time, so a generator streams.
        """
        images = _image_stream(images)
        spec = self.class_spec(classes)
        n_cls = len(spec)
        stats = self.last_stats = RunStats(backend=self.model.backend, dtype=str(self.model.dtype).removeprefix("torch."))
        t_setup = time.perf_counter()
        if n_cls == 1:
            # One candidate: the answer is certain, the model is not run.
            for i, im in enumerate(images):
                self._pixels(im, i)  # still report unreadable or malformed inputs
                stats.images += 1
                yield i, self._result(spec, None, 0, 0.0)
            return
        cond = self._conditions(spec)
        runner = Runner(self.model, self.bank, cond, spec.class_prompts, self.loss)
        stats.setup_seconds = time.perf_counter() - t_setup
        sched = Scheduler(self.buckets, self.max_inflight, self.speculate)
        states: dict[int, ImageState] = {}
        started: dict[int, float] = {}
        pending = iter(enumerate(images))
        exhausted = False
        t0 = time.perf_counter()

        def refill() -> None:
            nonlocal exhausted
            # Keep enough images encoded and waiting to fill the in-flight slots.
            while not exhausted and len(sched.waiting) < max(chunk, self.max_inflight):
                block = [next(pending, None) for _ in range(chunk)]
                block = [b for b in block if b is not None]
                if not block:
                    exhausted = True
                    return
                pix = [self._pixels(im, i) for i, im in block]
                x0 = self.model.encode_images(pix).float()
                for (i, _), px, x in zip(block, pix, x0):
                    # Key the noise on the input pixels, not the latent: a VAE's output depends (in the
                    # last bits) on how images are batched, and the noise must not.
                    key = image_key(px)
                    pol = self._new_policy(i, n_cls, key, runner.cost)
                    states[i] = ImageState(key, x, pol)
                    sched.add(i, pol)

        refill()
        while True:
            batch = sched.schedule()
            if batch is None:
                finished = sched.retire()
                if not finished:
                    if sched.has_work:
                        raise RuntimeError("scheduler stalled: in-flight policies neither done nor asking for work")
                    break
            else:
                now = time.perf_counter()
                for rid in batch.request_ids:
                    started.setdefault(rid, now)
                errors = runner.run(batch, states)
                finished = sched.update(batch, errors)
            now = time.perf_counter()
            for rid in finished:
                st = states.pop(rid)
                o = st.policy.outcome()
                stats.images += 1
                if progress is not None:
                    progress.update(1)
                yield rid, self._result(spec, o, st.policy.spent, now - started.get(rid, now))
            refill()
        stats.seconds = time.perf_counter() - t0
        s = sched.stats
        stats.evaluations, stats.padded_rows, stats.batches = s.rows, s.padded, s.batches
        stats.bucket_counts = dict(s.bucket_counts)
        stats.kernels = kernels.active_backend()

    def _new_policy(self, index: int, n_classes: int, key: int, cost: np.ndarray):
        """The policy of input ``index`` (``match`` overrides it: each image scores only its own captions)."""
        return make_policy(self.policy_cfg, n_classes, self.model.num_timesteps, self.bank, key, cost)

    # -- image-text matching -------------------------------------------------------------
    def match(self, images: Sequence[ImageLike] | ImageLike, captions: Sequence[str], *, n_grid: int | None = None, shared_noise: bool = False, progress: Any = None):
        """Image-text matching: the mean error of every (image, caption) pair, as a :class:`MatchResult`.

        ``result.errors[i, j]`` is the mean denoising error of image i under caption j
        (lower = better match; ``result.scores`` is its negative). Every caption of
        an image is scored on the same (t, eps) samples, exhaustively on Li et al.'s
        ``n_grid``-point timestep grid (default: this classifier's ``n_grid``, 50),
        with the noise ``classify`` would use for that image and seed.
        ``shared_noise=True`` also shares the samples across images. Captions are
        full prompts (no template). See :mod:`diffcls_fast.engine.match`.
        """
        from .match import match

        return match(self, images, captions, n_grid=n_grid, shared_noise=shared_noise, progress=progress)

    def _pixels(self, im: ImageLike, index: int) -> torch.Tensor:
        """Input ``index`` (any accepted image form) -> the model's preprocessed pixels [C, H, W] in [-1, 1]."""
        return to_pixels(im, self.model.image_hw, self.model.image_channels, name=f"images[{index}]")

    def _result(self, spec: ClassSpec, o, spent: int, seconds: float) -> ClassificationResult:
        if o is None:
            return ClassificationResult(0, spec.names[0], spec.names, np.ones(1), np.full(1, np.nan), np.zeros(1, np.int64), 0, 0, seconds, self.policy_cfg.describe())
        if o.failure is not None:
            # This image failed (a NaN/inf score, or a policy bug); the run goes on. No label, no posterior.
            return ClassificationResult(
                label=-1,
                label_name="",
                class_names=spec.names,
                probabilities=np.zeros(len(spec.names)),
                mean_errors=o.mean_errors,
                n_scores=o.n_scores,
                evaluations=o.evaluations,
                evaluations_spent=spent,
                seconds=seconds,
                policy=self.policy_cfg.describe(),
                error=o.failure.message(spec.names),
            )
        probs = posterior(o.mean_errors, o.n_scores, o.label, self.temperature)
        return ClassificationResult(
            label=o.label,
            label_name=spec.names[o.label],
            class_names=spec.names,
            probabilities=probs,
            mean_errors=o.mean_errors,
            n_scores=o.n_scores,
            evaluations=o.evaluations,
            evaluations_spent=spent,
            seconds=seconds,
            policy=self.policy_cfg.describe(),
        )


def _image_stream(images: object) -> Iterable[ImageLike]:
    """The ``images`` argument as an iterable of single images (one image, a batch tensor, or any iterable)."""
    if images is None:
        raise UserError("images is None; pass an image (path, PIL image, array or tensor) or an iterable of them")
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images) if images.ndim == 4 else [images]  # [N, C, H, W] (or N HWC arrays) is N images
    if isinstance(images, (bytes, bytearray)):
        raise UserError("images: got bytes; pass a path or a PIL image (PIL.Image.open(io.BytesIO(data)))")
    if not isinstance(images, Iterable):
        raise UserError(f"images: expected an image (path, PIL image, array or tensor) or an iterable of them, got {type(images).__name__}")
    return images


def _class_names(classes: object) -> list[str]:
    """A sequence of class names, checked: every name is a string (an int is refused, not guessed at)."""
    if not isinstance(classes, Iterable):
        raise UserError(f"classes: expected a list of names, a comma-separated string or a ClassSpec, got {type(classes).__name__}")
    names = list(classes)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise UserError(f"classes[{i}] is {name!r} ({type(name).__name__}); class names must be strings, e.g. [str(c) for c in classes]")
    return names


def check_temperature(temperature: object) -> float:
    """The posterior's softmax temperature: a finite number > 0 (0 gives NaNs, a negative one inverts the ranking)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def embedding_key(model: ModelBundle) -> str:
    """What besides the prompt decides an embedding: the text encoder's files, its dtype and the device type."""
    return f"{model.text_fingerprint}-{str(model.dtype).removeprefix('torch.')}-{model.device.type}"


def model_default_temperature(model: ModelBundle) -> float:
    """Softmax temperature for posteriors: the model's calibrated value if it ships one, else 1e-2."""
    return float(getattr(model, "temperature", None) or 1e-2)
