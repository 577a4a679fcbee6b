"""The two kinds of settings: one :class:`EngineConfig` per engine, one :class:`RequestOptions` per request.

The engine-wide settings (model aside) are the batch buckets, the in-flight bound,
speculation, the loss and the embedding cache: none of them changes a result beyond
the floating-point tolerance of batch composition. Everything else a request may set
for itself (policy and its options, seed, posterior temperature and floor) travels in
a small frozen :class:`RequestOptions` that the engine admits with the request; the
engine never copies or reaches into the :class:`DiffusionClassifier` facade.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import DiffclsWarning, UserError
from .cache import EmbeddingCache
from .noise import NoiseBank, check_seed
from .ood import ood_threshold
from .policies import OPTIONS, Policy, PolicyConfig, read_rule
from .runner import LOSSES, Runner
from .scheduler import SPECULATION, power_of_two_buckets

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle

DEFAULT_TEMPERATURE = 1e-2  # for a model that ships no calibration for the policy


class PolicyFactory(Protocol):
    """What a request's policy is to the engine: one policy per image, and a name for results.

    :class:`PolicyConfig` is one; ``match`` uses one whose images each score their own captions.
    """

    def make(self, index: int, n_classes: int, T: int, bank: NoiseBank, key: int, cost: np.ndarray | None) -> Policy:
        """The policy of input ``index`` of the request (its noise ``key``; ``cost`` rows per query of each class)."""

    def describe(self) -> str:
        """The policy and its options, as results report them."""


@dataclass(frozen=True)
class EngineConfig:
    """The settings of one engine (and of every request it serves)."""

    buckets: tuple[int, ...]  # the batch sizes a denoiser call may have (padding fills a batch up to one)
    max_inflight: int = 64  # images scored concurrently
    speculate: str = "fill"  # what to do when in-flight images cannot fill a batch (scheduler.SPECULATION)
    loss: str = "l2"
    cache: EmbeddingCache | None = None  # text models' condition embeddings on disk; None: encode every time
    make_runner: Callable[[ModelBundle, str], Runner] = Runner  # (model, loss) -> runner; benchmarks memoise
    # Prepare batch k+1 on this thread while batch k runs on a device worker thread (core.Engine._run_overlapped).
    overlap: bool = False

    @classmethod
    def build(
        cls,
        model: ModelBundle,
        *,
        batch_size: Any = 256,
        buckets: Sequence[int] | None = None,
        max_inflight: Any = 64,
        speculate: str = "auto",
        loss: str = "l2",
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        overlap: Any = "auto",
    ) -> EngineConfig:
        """The checked settings (a :class:`UserError` naming the bad one). ``overlap``: True, False or "auto"
        (on for a CUDA model, whose kernels run while the host prepares the next batch; off on a CPU, where
        both halves would share the same cores)."""
        bucket_list = check_scheduler_args(batch_size, buckets, max_inflight, speculate)
        if loss not in LOSSES:
            raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if speculate == "auto":
            # Rows of a batch cost little next to the call itself until the batch is large (GPU, and
            # small models on CPU): with too few images in flight, scoring ahead beats tiny batches.
            # Measured on digits (50 images, CPU): fill 9.3 s vs pad 17.0 s, for 2.6% more evaluations.
            speculate = "fill"
        overlap = {"on": True, "off": False}.get(overlap, overlap) if isinstance(overlap, str) else overlap
        if overlap == "auto":
            overlap = str(model.device).startswith("cuda")
        elif not isinstance(overlap, bool):
            raise UserError(f"overlap must be true, false, auto, on or off, got {overlap!r}")
        cache = None
        if use_cache and model.cond_kind == "text":
            cache = EmbeddingCache(cache_dir, embedding_key(model), shape=model.cond_shape)
        return cls(tuple(bucket_list), int(max_inflight), speculate, loss, cache, overlap=overlap)

    @property
    def max_batch(self) -> int:
        return max(self.buckets)


@dataclass(frozen=True)
class RequestOptions:
    """What one request sets for itself; the engine admits a request with one of these.

    ``explicit`` keeps the temperature and floor as the caller gave them (None: the model's
    calibration), so that :meth:`derive` for another policy follows the same rule.
    """

    policy: PolicyFactory
    bank: NoiseBank
    temperature: float
    posterior_floor: float
    explicit: tuple[Any, Any] = (None, None)
    distinct_classes: bool = True  # refuse classes whose conditions are identical (match allows them)
    ood_threshold: float | None = None  # the model's out-of-distribution rule for this policy and loss (see .ood)
    abstain_ood: bool = False  # answer no label for an image the rule flags
    from_rule: bool = False  # ``explicit`` holds a tuned rule's calibration, not the caller's values

    @classmethod
    def build(
        cls,
        model: ModelBundle,
        loss: str,
        bank: NoiseBank,
        policy: str = "ttest",
        policy_options: dict | None = None,
        temperature: Any = None,
        posterior_floor: Any = None,
        abstain_ood: Any = False,
    ) -> RequestOptions:
        """Checked options for ``model`` scored with ``loss``: the policy and its options, the noise bank, the
        posterior's temperature and floor (None: the model's calibration for the policy and loss), and whether
        to abstain on out-of-distribution images."""
        given = (temperature, posterior_floor)
        temperature, posterior_floor = _tuned_posterior(
            model, policy, policy_options or {}, loss, temperature, posterior_floor
        )
        cfg = policy_config(model, policy, policy_options or {}, bank)
        t, f = posterior_params(model, cfg.name, loss, temperature, posterior_floor)
        abstain = check_abstain(abstain_ood)
        return cls(
            cfg,
            bank,
            t,
            f,
            (temperature, posterior_floor),
            ood_threshold=ood_threshold(model, cfg, loss),
            abstain_ood=abstain,
            from_rule=(temperature, posterior_floor) != given,
        )

    def derive(
        self,
        model: ModelBundle,
        loss: str,
        *,
        policy: str | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        posterior_floor: float | None = None,
        abstain_ood: bool | None = None,
        **policy_options: Any,
    ) -> RequestOptions:
        """These options with some replaced (unnamed policy options keep their values).

        ``seed`` gives another noise bank (a saved noise tensor stays); ``temperature`` and
        ``posterior_floor`` follow the constructor's rule (default: the model's calibration for
        the policy, unless explicit values were given before).
        """
        check_option_names(policy_options)
        cfg = self.policy
        if not isinstance(cfg, PolicyConfig):
            raise TypeError("derive() needs options whose policy is a PolicyConfig")
        explicit, from_rule = self.explicit, self.from_rule
        if policy is not None and from_rule:  # another policy: the old rule's calibration is not the caller's
            explicit, from_rule = (None, None), False
        if policy is not None or policy_options:
            opts = dict(cfg.options) | policy_options
            if policy == "tuned" and temperature is None:
                explicit = _tuned_posterior(model, policy, opts, loss, None, posterior_floor)
                from_rule = True
            cfg = policy_config(model, cfg.name if policy is None else policy, opts, self.bank)
        bank = self.bank
        if seed is not None and check_seed(seed) != bank.seed:
            bank = bank.with_seed(check_seed(seed))
        if temperature is not None:
            explicit, from_rule = (temperature, posterior_floor), False
        elif posterior_floor is not None:
            explicit = (explicit[0], posterior_floor)
        t, f = posterior_params(model, cfg.name, loss, *explicit)
        abstain = self.abstain_ood if abstain_ood is None else check_abstain(abstain_ood)
        return replace(
            self,
            policy=cfg,
            bank=bank,
            temperature=t,
            posterior_floor=f,
            explicit=explicit,
            ood_threshold=ood_threshold(model, cfg, loss),
            abstain_ood=abstain,
            from_rule=from_rule,
        )

    @property
    def policy_name(self) -> str:
        return self.policy.describe()


# -- checks -------------------------------------------------------------------------------------
def check_abstain(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise UserError(f"abstain_ood must be true or false, got {value!r}")
    return bool(value)


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


def check_scheduler_args(
    batch_size: Any = 256, buckets: Sequence[int] | None = None, max_inflight: Any = 64, speculate: str = "auto"
) -> list[int]:
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


def check_option_names(policy_options: dict) -> None:
    unknown = set(policy_options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")


def policy_config(model: ModelBundle, policy: str, options: dict, bank: NoiseBank | None = None) -> PolicyConfig:
    """The checked policy configuration for ``model`` (and, with a saved noise tensor, for its rows)."""
    check_option_names(options)
    if policy == "tuned":
        policy, options = resolve_tuned(model, options)
    cfg = PolicyConfig(name=policy, **options)
    try:
        cfg.validate(model.num_timesteps)
    except ValueError as e:
        raise UserError(str(e)) from None
    if bank is not None and bank.saved is not None:
        check_noise_rows(bank.saved.shape[0], cfg, model.num_timesteps)
    return cfg


def tuned_source(model: ModelBundle, options: dict) -> str:
    """Where ``--policy tuned`` reads its rule: ``--tuned FILE``, else the model folder's diffcls.json."""
    src = options.get("tuned") or ""
    if src:
        return str(src)
    own = Path(model.path) / "diffcls.json" if model.path and not model.path.startswith("preset:") else None
    if own is not None and own.is_file():
        try:
            ships = isinstance(meta := json.loads(own.read_text()), dict) and "tuned" in meta
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ships = False  # the loader reported a broken diffcls.json already; here it only has no rule
        if ships:
            return str(own)
    raise UserError(
        f"--policy tuned: the {model.name} model ships no tuned rule; pass --tuned FILE "
        f"(made by: diffcls-fast tune --model {model.name} --data DIR --out FILE, on labelled images it was not"
        " trained on)"
    )


def resolve_tuned(model: ModelBundle, options: dict) -> tuple[str, dict]:
    """The concrete policy and options of the tuned rule ``--policy tuned`` names (other options kept, as a
    policy's options always carry every other policy's), so results and settings name the rule that ran."""
    src = tuned_source(model, options)
    try:
        rule = read_rule(src)
    except ValueError as e:
        raise UserError(str(e)) from None
    fitted_on = rule.get("model", {}).get("fingerprint")
    if fitted_on and fitted_on != model.fingerprint and (model.name, src) not in _WARNED_TUNED:
        _WARNED_TUNED.add((model.name, src))
        warnings.warn(
            f"the tuned rule {src} was fitted on other weights ({rule['model'].get('name')}), not {model.name}'s",
            DiffclsWarning,
            stacklevel=5,
        )
    policy = dict(rule["policy"])
    name = policy.pop("name")
    # the source stays among the (ignored) options, so that a later request for "tuned" finds it again
    return name, {**options, "tuned": src if options.get("tuned") else "", **policy}


def tuned_calibration(model: ModelBundle, options: dict) -> dict | None:
    """The calibration a tuned rule was fitted with ({"temperature", "floor", "loss"}), or None."""
    try:
        return read_rule(tuned_source(model, options)).get("calibration")
    except ValueError as e:
        raise UserError(str(e)) from None


_WARNED_TUNED: set[tuple] = set()


def _tuned_posterior(
    model: ModelBundle, policy: str, options: dict, loss: str, temperature: Any, floor: Any
) -> tuple[Any, Any]:
    """The (temperature, floor) a request with ``policy`` runs with before the model's calibration is read:
    a tuned rule's own calibration when the caller gave no temperature and it was fitted with ``loss``
    (kept as explicit values, so a later change of seed or option keeps it), else what was given."""
    if policy != "tuned" or temperature is not None:
        return temperature, floor
    cal = tuned_calibration(model, options)
    if not cal or cal.get("loss", "l2") != loss:
        # not the model's calibration for the concrete policy: that one was fitted for other options
        key = (model.fingerprint, tuned_source(model, options), loss)
        if key not in _WARNED_TUNED:
            _WARNED_TUNED.add(key)
            why = "has no calibration" if not cal else f"was calibrated with loss {cal.get('loss', 'l2')}"
            warnings.warn(
                f"the tuned rule {why}; with loss {loss} the posteriors are uncalibrated (temperature"
                f" {DEFAULT_TEMPERATURE:g}, no floor): pass a temperature, or tune with this loss",
                DiffclsWarning,
                stacklevel=4,
            )
        return DEFAULT_TEMPERATURE, 0.0 if floor is None else floor
    return float(cal["temperature"]), float(cal.get("floor", 0.0)) if floor is None else floor


def check_noise_rows(rows: int, cfg: PolicyConfig, T: int | None, where: str = "") -> None:
    """With a saved noise tensor (sample i uses row i), the policy must fit in its ``rows``: refused up
    front, so no image fails halfway, and whether one does never depends on batching or speculation."""
    need, flag = cfg.max_samples(T)
    if need > rows:
        raise UserError(
            f"{where}the saved noise has {rows} rows, but {cfg.describe()} may use up to {need} samples "
            f"(sample i uses row i); save more rows, or lower {flag} to at most {rows}"
        )


def check_temperature(temperature: object) -> float:
    """The posterior's softmax temperature: a finite number > 0 (0 gives NaNs, a negative one inverts the ranking)."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise UserError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_floor(floor: object) -> float:
    """The posterior's uniform floor: a number in [0, 1)."""
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 <= floor < 1:
        raise UserError(f"posterior_floor must be a number in [0, 1), got {floor!r}")
    return float(floor)


# -- the posterior's temperature and floor ------------------------------------------------------
_WARNED_LOSS: set[tuple] = set()  # (model, policy, loss) already warned about: once per process, not per request


def posterior_params(model: ModelBundle, policy: str, loss: str, temperature: Any, floor: Any) -> tuple[float, float]:
    """(temperature, floor): explicit values win; else the model's calibration for the policy and
    loss (fitted on its train split). An explicit temperature without a floor means floor 0."""
    cal = model_calibration(model, policy, loss)
    fitted = (getattr(model, "calibration", None) or {}).get(policy)
    if (
        temperature is None
        and fitted
        and fitted.get("loss", "l2") != loss
        and (model.fingerprint, policy, loss) not in _WARNED_LOSS
    ):
        _WARNED_LOSS.add((model.fingerprint, policy, loss))
        # The scale of a mean error depends on the loss (x0's is ~40x smaller than l2's): another
        # loss's temperature would give confident nonsense, so the default is used, and said.
        warnings.warn(
            f"the {model.name} model's calibration for {policy} was fitted with loss {fitted.get('loss', 'l2')}; "
            f"with loss {loss} the posteriors are uncalibrated (temperature {DEFAULT_TEMPERATURE:g}, no floor): "
            "pass a temperature, or fit one (scripts/fit_calibration.py)",
            DiffclsWarning,
            stacklevel=4,
        )
    t = check_temperature(temperature if temperature is not None else cal["temperature"])
    f = check_floor(floor if floor is not None else (cal["floor"] if temperature is None else 0.0))
    return t, f


def model_calibration(model: ModelBundle, policy: str, loss: str = "l2") -> dict:
    """The posterior's temperature and floor: the model's calibration for ``policy`` if it ships one
    fitted with ``loss`` (an entry that names no loss was fitted with the default, l2)."""
    cal = (getattr(model, "calibration", None) or {}).get(policy)
    if cal and cal.get("loss", "l2") == loss:
        return {"temperature": float(cal["temperature"]), "floor": float(cal.get("floor", 0.0))}
    return {"temperature": DEFAULT_TEMPERATURE, "floor": 0.0}


def embedding_key(model: ModelBundle) -> str:
    """What besides the prompt decides an embedding: the text encoder's files, its dtype and the device type."""
    return f"{model.text_fingerprint}-{str(model.dtype).removeprefix('torch.')}-{model.device.type}"
