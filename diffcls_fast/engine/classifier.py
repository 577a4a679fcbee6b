"""The Python API: ``DiffusionClassifier(model, policy=...).classify(images, classes)``."""

from __future__ import annotations

import copy
import math
import numbers
import operator
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import kernels
from ..errors import DiffclsWarning, UserError
from ..images import to_pixels
from ..models.bundle import ModelBundle
from .cache import EmbeddingCache
from .noise import NoiseBank, check_seed
from .policies import Outcome, PolicyConfig, make_policy
from .prompts import ClassSpec, parse_class_list
from .results import ClassificationResult, RunStats, posterior
from .runner import LOSSES, Runner
from .scheduler import SPECULATION, power_of_two_buckets

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
_POLICY_FIELDS = {f.name for f in fields(PolicyConfig)} - {"name"}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise UserError(f"{name} must be a positive integer, got {value!r}") from None
    if v < 1:
        raise UserError(f"{name} must be >= 1, got {v}")
    return v


def check_scheduler_args(batch_size: Any = 256, buckets: Sequence[int] | None = None, max_inflight: Any = 64, speculate: str = "auto") -> list[int]:
    """Validate the scheduler's arguments (a :class:`UserError` naming the bad one); returns the buckets.

    The CLI calls it before loading the model, so a bad ``--batch-size`` fails fast.
    """
    _positive_int("max_inflight", max_inflight)
    if speculate != "auto" and speculate not in SPECULATION:
        raise UserError(f"speculate must be one of auto, {', '.join(SPECULATION)}; got {speculate!r}")
    if buckets is not None:
        if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
            raise UserError(f"buckets must be a non-empty list of positive integers, got {buckets!r}")
        return sorted({_positive_int("buckets", b) for b in buckets})
    return power_of_two_buckets(_positive_int("batch_size", batch_size))


class DiffusionClassifier:
    """A zero-shot classifier from a conditional diffusion model.

    ``model`` is a :class:`ModelBundle` or anything :func:`load_model` takes.
    ``policy`` is ``"ttest"`` (default), ``"halving"``, ``"adaptive"`` or ``"exhaustive"``;
    policy options (``n_grid``, ``n_samples``, ``to_keep``, ``min_scores``,
    ``max_scores``, ``cutoff_pval``, ``sides``, ``t_order``, ``rounds``, ``keep``,
    ``t_band``) are keyword arguments. ``temperature`` and ``posterior_floor``
    default to the model's calibration for the policy (see :mod:`.calibration`).
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
        self.buckets = check_scheduler_args(batch_size, buckets, max_inflight, speculate)
        self.max_inflight = int(max_inflight)
        self.seed = check_seed(seed)
        if loss not in LOSSES:
            raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.loss = loss
        self._temperature_arg, self._floor_arg = temperature, posterior_floor
        self.temperature, self.posterior_floor = _posterior_params(model, self.policy_cfg.name, loss, temperature, posterior_floor)
        if speculate == "auto":
            # Rows of a batch cost little next to the call itself until the batch is large (GPU, and
            # small models on CPU): with too few images in flight, scoring ahead beats tiny batches.
            # Measured on digits (50 images, CPU): fill 9.3 s vs pad 17.0 s, for 2.6% more evaluations.
            speculate = "fill"
        self.speculate = speculate
        self.bank = NoiseBank(model.latent_shape, self.seed, saved=noise)
        _check_noise_rows(self.bank, self.policy_cfg, model.num_timesteps)
        self.cache = EmbeddingCache(cache_dir, embedding_key(model), shape=model.cond_shape) if use_cache and model.cond_kind == "text" else None
        self.last_stats = RunStats()

    def with_options(self, *, policy: str | None = None, seed: int | None = None, temperature: float | None = None, posterior_floor: float | None = None, **policy_options: Any) -> DiffusionClassifier:
        """A view of this classifier with other per-request options, sharing its model, cache and engine settings.

        ``policy`` and policy options override this classifier's (unnamed options keep
        its values); ``seed`` gives another noise bank (a saved noise tensor stays);
        ``temperature`` and ``posterior_floor`` follow the constructor's rule (default:
        the model's calibration for the view's policy, unless this classifier was
        given explicit values). ``view.classify(...)`` equals a classifier built with
        the same arguments. The batch size, buckets, in-flight bound, speculation and
        loss are the engine's and stay; :class:`diffcls_fast.engine.Engine` runs requests
        with different views in the same batches.
        """
        unknown = set(policy_options) - _POLICY_FIELDS
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        view = copy.copy(self)
        if policy is not None or policy_options:
            opts = {f: getattr(self.policy_cfg, f) for f in _POLICY_FIELDS} | policy_options
            view.policy_cfg = PolicyConfig(name=self.policy_cfg.name if policy is None else policy, **opts)
            try:
                view.policy_cfg.validate(self.model.num_timesteps)
            except ValueError as e:
                raise UserError(str(e)) from None
            _check_noise_rows(self.bank, view.policy_cfg, self.model.num_timesteps)
        if seed is not None and check_seed(seed) != self.seed:
            view.seed = check_seed(seed)
            view.bank = copy.copy(self.bank)  # the same saved noise (checked once), another seed
            view.bank.seed = view.seed
        if temperature is not None:
            view._temperature_arg, view._floor_arg = temperature, posterior_floor
        elif posterior_floor is not None:
            view._floor_arg = posterior_floor
        view.temperature, view.posterior_floor = _posterior_params(self.model, view.policy_cfg.name, view.loss, view._temperature_arg, view._floor_arg)
        view.last_stats = RunStats()
        return view

    # -- classes ------------------------------------------------------------------------
    def class_spec(self, classes: ClassSpec | Sequence[str] | str | None) -> ClassSpec:
        return self._class_spec(classes).check_fits(max(self.buckets))

    def _class_spec(self, classes: ClassSpec | Sequence[str] | str | None) -> ClassSpec:
        m = self.model
        if classes is None:
            if not m.class_names:
                raise UserError(f"model {m.name} ships no class list; pass classes")
            if m.default_prompts:
                return ClassSpec.from_prompts(m.class_names, m.default_prompts)
            return ClassSpec.from_names(m.class_names, m.prompt_template)
        if isinstance(classes, ClassSpec):
            return classes.validate()
        if isinstance(classes, str):
            return parse_class_list(classes, m.prompt_template)
        return ClassSpec.from_names(_class_names(classes), m.prompt_template)

    def _conditions(self, spec: ClassSpec) -> torch.Tensor:
        """The condition table (one row per prompt); refuses non-finite rows.

        The cache re-encodes an entry that holds NaN/inf itself (see :mod:`.cache`), so a
        non-finite row here comes from the encoder: its weights are broken.
        """
        if self.cache is not None:  # text models only (class ids need no cache)
            cond = self.cache.get(spec.prompts, self.model.encode_prompts).to(self.model.device, self.model.dtype)
        else:
            cond = self.model.encode_prompts(spec.prompts)
        bad = _non_finite_rows(cond)
        if bad:
            raise UserError(f"the model's condition encoder returns non-finite values (NaN/inf) for {_quote_some([spec.prompts[i] for i in bad])}; its weights are broken")
        return cond

    def _unknown_words(self, spec: ClassSpec) -> tuple[str, set[int]] | None:
        """A sentence naming the words of the prompts the tokenizer does not know, and the classes
        whose prompts hold them (None if there are none)."""
        finder = getattr(self.model, "unknown_words", None)
        if finder is None or self.model.cond_kind != "text":
            return None
        found = finder(spec.prompts)  # [(prompt index, word)]
        if not found:
            return None
        words = list(dict.fromkeys(w for _, w in found))
        bad_prompts = {i for i, _ in found}
        classes = [c for c, ids in enumerate(spec.class_prompts) if bad_prompts & {int(i) for i in ids}]
        unk = getattr(self.model, "unk_token", None) or "the unknown token"
        them = "it" if len(words) == 1 else "them"
        names = _quote_some([spec.names[c] for c in classes], "class", "classes")
        return f"the {self.model.name} tokenizer does not know {_quote_some(words)} ({names}) and encodes {them} as {unk}", set(classes)

    def _check_distinct(self, spec: ClassSpec, cond: torch.Tensor, unknown: tuple[str, set[int]] | None = None) -> None:
        """Refuse classes whose conditions are identical (the same set of embedding rows): no image can
        tell them apart, and the t-test could never drop one for the other (each would run to max_scores)."""
        row_id: dict[bytes, int] = {}
        prompt_group = []
        for chunk in cond.detach().reshape(len(cond), -1).split(64):  # bounded host memory for large tables
            chunk = chunk.to("cpu")
            data = (chunk.float() if chunk.dtype.is_floating_point else chunk).contiguous().numpy()
            prompt_group += [row_id.setdefault(r.tobytes(), len(row_id)) for r in data]
        by_key: dict[tuple[int, ...], list[int]] = {}
        for c, ids in enumerate(spec.class_prompts):
            by_key.setdefault(tuple(sorted({prompt_group[int(i)] for i in ids})), []).append(c)
        same = [cs for cs in by_key.values() if len(cs) > 1]
        if same:
            groups = "; ".join(_quote_some([spec.names[c] for c in cs], "", "", limit=6) for cs in same[:5])
            more = f" (and {len(same) - 5} more groups)" if len(same) > 5 else ""
            if unknown is not None and any(set(cs) & unknown[1] for cs in same):
                why = unknown[0]
            else:
                why = "their prompts encode to the same tokens (a tokenizer may ignore case, spacing and punctuation)"
            raise UserError(f"classes with identical prompt embeddings cannot be told apart: {groups}{more}; {why}. Rename them, or drop all but one of each group")

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
        from .core import Engine

        images = _image_stream(images)
        stats = self.last_stats = RunStats(backend=self.model.backend, dtype=str(self.model.dtype).removeprefix("torch."))
        t_setup = time.perf_counter()
        # One engine per call (its stats are this call's); the server keeps one engine for all requests.
        engine = Engine(self)
        req = engine.submit(images, classes, chunk=chunk)
        if req.warning is not None:
            warnings.warn(DiffclsWarning(req.warning), stacklevel=2)
        stats.setup_seconds = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        while engine.has_work:
            for _, i, r in engine.step():
                stats.images += 1
                if progress is not None:
                    progress.update(1)
                yield i, r
        stats.seconds = time.perf_counter() - t0
        s = engine.stats
        stats.evaluations, stats.padded_rows, stats.batches = s.rows, s.padded, s.batches
        stats.bucket_counts = dict(s.bucket_counts)
        stats.kernels = kernels.active_backend()

    def _new_runner(self) -> Runner:
        """The engine's runner (a benchmark sweep substitutes one that memoises, bench/score_memo.py)."""
        return Runner(self.model, loss=self.loss)

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

    def _failed_result(self, spec: ClassSpec, message: str, o: Outcome | None, spent: int, seconds: float) -> ClassificationResult:
        """A failed image: no label, no posterior; the means and counts the rule had consumed, the evaluations spent."""
        n = len(spec)
        return ClassificationResult(
            label=-1,
            label_name="",
            class_names=spec.names,
            probabilities=np.zeros(n),
            mean_errors=o.mean_errors if o is not None else np.full(n, np.nan),
            n_scores=o.n_scores if o is not None else np.zeros(n, np.int64),
            evaluations=o.evaluations if o is not None else 0,
            evaluations_spent=spent,
            seconds=seconds,
            policy=self.policy_cfg.describe(),
            error=message,
        )

    def _result(self, spec: ClassSpec, o, spent: int, seconds: float) -> ClassificationResult:
        if o is None:
            return ClassificationResult(0, spec.names[0], spec.names, np.ones(1), np.full(1, np.nan), np.zeros(1, np.int64), 0, 0, seconds, self.policy_cfg.describe())
        if o.failure is not None:  # this image failed (a NaN/inf score, or a policy bug); the run goes on
            return self._failed_result(spec, o.failure.message(spec.names), o, spent, seconds)
        probs = posterior(o.mean_errors, o.n_scores, o.label, self.temperature, self.posterior_floor)
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


def _non_finite_rows(t: torch.Tensor) -> list[int]:
    if not t.dtype.is_floating_point:
        return []
    return torch.nonzero(~torch.isfinite(t.detach().reshape(len(t), -1)).all(dim=1)).flatten().tolist()


def _quote_some(items: Sequence[str], one: str = "", many: str = "", limit: int = 8) -> str:
    """'a', 'b' and 3 more (with an optional noun: "class 'a'", "classes 'a', 'b'")."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
    noun = one if len(items) == 1 else many
    return f"{noun} {shown}" if noun else shown


def check_noise_rows(rows: int, cfg: PolicyConfig, T: int, where: str = "") -> None:
    """With a saved noise tensor (sample i uses row i), the policy must fit in its ``rows``: refused up
    front, so no image fails halfway, and whether one does never depends on batching or speculation."""
    need, option = cfg.max_samples(T)
    if need > rows:
        raise UserError(f"{where}the saved noise has {rows} rows, but {cfg.describe()} may use up to {need} samples (sample i uses row i); save more rows, or lower {option} to at most {rows}")


def _check_noise_rows(bank: NoiseBank, cfg: PolicyConfig, T: int) -> None:
    if bank.saved is not None:
        check_noise_rows(bank.saved.shape[0], cfg, T)


_WARNED_LOSS: set[tuple] = set()  # (model, policy, loss) already warned about: once per process, not per request


def _posterior_params(model: ModelBundle, policy: str, loss: str, temperature: Any, floor: Any) -> tuple[float, float]:
    """(temperature, floor): explicit values win; else the model's calibration for the policy and
    loss (fitted on its train split). An explicit temperature without a floor means floor 0."""
    cal = model_calibration(model, policy, loss)
    fitted = (getattr(model, "calibration", None) or {}).get(policy)
    if temperature is None and fitted and fitted.get("loss", "l2") != loss and (model.fingerprint, policy, loss) not in _WARNED_LOSS:
        _WARNED_LOSS.add((model.fingerprint, policy, loss))
        # The scale of a mean error depends on the loss (x0's is ~40x smaller than l2's): another
        # loss's temperature would give confident nonsense, so the default is used, and said.
        warnings.warn(
            f"the {model.name} model's calibration for {policy} was fitted with loss {fitted.get('loss', 'l2')}; with loss {loss} "
            f"the posteriors are uncalibrated (temperature {DEFAULT_TEMPERATURE:g}, no floor): pass a temperature, or fit one (scripts/fit_calibration.py)",
            DiffclsWarning,
            stacklevel=3,
        )
    t = check_temperature(temperature if temperature is not None else cal["temperature"])
    f = check_floor(floor if floor is not None else (cal["floor"] if temperature is None else 0.0))
    return t, f


DEFAULT_TEMPERATURE = 1e-2  # for a model that ships no calibration for the policy


def model_calibration(model: ModelBundle, policy: str, loss: str = "l2") -> dict:
    """The posterior's temperature and floor: the model's calibration for ``policy`` if it ships one
    fitted with ``loss`` (an entry that names no loss was fitted with the default, l2)."""
    cal = (getattr(model, "calibration", None) or {}).get(policy)
    if cal and cal.get("loss", "l2") == loss:
        return {"temperature": float(cal["temperature"]), "floor": float(cal.get("floor", 0.0))}
    return {"temperature": DEFAULT_TEMPERATURE, "floor": 0.0}


def check_floor(floor: object) -> float:
    """The posterior's uniform floor: a number in [0, 1)."""
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 <= floor < 1:
        raise UserError(f"posterior_floor must be a number in [0, 1), got {floor!r}")
    return float(floor)
