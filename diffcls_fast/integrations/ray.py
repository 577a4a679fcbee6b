"""Ray Data: classify a ``ray.data.Dataset`` of images on a pool of actors, one model per actor.

    import ray
    from diffcls_fast.integrations.ray import classify_dataset

    ds = ray.data.read_images("s3://bucket/images/", include_paths=True)  # column "image": HWC uint8 arrays
    out = classify_dataset(
        ds, model="/models/sd-2-1", classes=["cat", "dog"], policy="ttest", concurrency=8, num_gpus=1, batch_size=64
    )
    out.write_parquet("s3://bucket/predictions/")

Each actor loads the model once (in ``__init__``) and runs the engine's continuous
batching (:meth:`DiffusionClassifier.classify_iter`) over every batch of rows it is
given, so the images of one batch share full denoiser calls. An image's result is a
pure function of (seed, image, classes, options): it does not depend on which actor
scores it, with what, or in which order, so the output equals a single-process run's.

Actors that die (a lost node, an OOM kill) are restarted and their batch is retried:
``max_restarts`` and ``max_task_retries`` (default 3 each) are set explicitly on the
actors rather than left to Ray's defaults (unbounded), so a batch that kills every
actor it lands on fails the run after 3 tries instead of looping.

``ray`` is imported lazily; without it the one-line error is ``ray is not installed;
pip install 'diffcls-fast[ray]'``.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, UserError

IMAGE_COLUMN = "image"
# Output columns (one row per input row). probabilities, mean_errors and n_scores are [C] per row, in class order.
RESULT_COLUMNS = (
    "label",
    "label_name",
    "top_classes",
    "top_probabilities",
    "probabilities",
    "mean_errors",
    "n_scores",
    "evaluations",
    "evaluations_spent",
    "seconds",
    "error",
    "ood_score",  # NaN where the model has no out-of-distribution rule for the policy
    "abstained",
)
# Fault injection for the tests: when this file exists, the first actor call to remove it kills its own process
# (SIGKILL).
KILL_ONCE_ENV = "DIFFCLS_RAY_KILL_ONCE"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailable("ray is not installed; pip install 'diffcls-fast[ray]'") from None
    return ray


# -- the classifier an actor builds ---------------------------------------------------------
def build_from_options(model: str, policy: str, device: str | None, dtype: str | None, backend: str, engine: dict):
    """A :class:`DiffusionClassifier` from plain options (the Python API)."""
    from ..build import build_classifier

    return build_classifier(model, policy, device=device, dtype=dtype, backend=backend, **engine)


def build_from_cli(a: Any, noise: Any):
    """The classifier ``diffcls-fast eval`` builds from its arguments (``a`` is the parsed namespace)."""
    from ..build import classifier_from_args

    return classifier_from_args(a, noise)


def _info(clf, spec) -> dict:
    """What the driver needs of a classifier whose model lives in an actor: settings, names, what ran."""
    from .. import kernels
    from ..evaluate import classifier_settings

    m = clf.model
    return {
        "settings": classifier_settings(clf, spec),
        "spec": spec,
        "random_weights": bool(m.random_weights),
        "describe": m.describe(),
        "name": m.name,
        "backend": m.backend,
        "implementation": m.implementation,
        "device": str(m.device),
        "dtype": str(m.dtype).removeprefix("torch."),
        "kernels": kernels.active_backend(),
        "temperature": clf.temperature,
        "posterior_floor": clf.posterior_floor,
        "policy_cfg": clf.policy_cfg,
    }


def _probe(factory: tuple, classes: Any) -> dict:
    from ..engine.conditions import prompt_notices

    clf = factory[0](*factory[1])
    spec = clf.class_spec(classes)
    notices = prompt_notices(clf.model, spec) if len(spec) > 1 else []  # the warnings classify_iter gives in actors
    return {**_info(clf, spec), "warnings": [sentence for sentence, _ in notices]}


class ClassifyBatch:
    """The callable class of :func:`classify_dataset`: ``__init__`` loads the model, ``__call__`` scores one batch.

    A batch is a dict of numpy arrays (``batch_format="numpy"``); the image column holds
    paths (str), encoded files (bytes), PIL images or arrays (HWC/HW uint8 images, or
    float [C, H, W] pixels in [-1, 1]). The other columns pass through; the image column
    is dropped unless ``keep_image``.
    """

    def __init__(
        self,
        factory: tuple,
        classes: Any,
        column: str = IMAGE_COLUMN,
        top_k: int = 5,
        keep_image: bool = False,
        driver_columns: bool = False,
    ):
        self.clf = factory[0](*factory[1])
        self.spec = self.clf.class_spec(classes)
        self.column, self.top_k, self.keep_image, self.driver_columns = column, top_k, keep_image, driver_columns
        if driver_columns:
            from ..evaluate import config_key

            self.settings_key = config_key(_info(self.clf, self.spec)["settings"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _kill_once()
        if self.column not in batch:
            raise UserError(
                f"classify_dataset: the dataset has no column {self.column!r} (columns: {', '.join(batch)}); pass"
                " column="
            )
        clash = [c for c in RESULT_COLUMNS if c in batch and c != self.column]
        if clash:
            raise UserError(
                f"classify_dataset: input column(s) {', '.join(map(repr, clash))} would be overwritten by the results;"
                " rename them first (ds.rename_columns)"
            )
        images = [_decode(x, i) for i, x in enumerate(batch[self.column])]
        results: list[Any] = [None] * len(images)
        for j, r in self.clf.classify_iter(images, self.spec):
            results[j] = r
        out = {k: v for k, v in batch.items() if k != self.column or self.keep_image}
        out.update(result_columns(results, self.top_k))
        if self.driver_columns:  # for `eval --ray`: the run's statistics, carried on the batch's first row
            st, n = self.clf.last_stats, len(images)
            for name, value in (
                ("_evaluations", st.evaluations),
                ("_padded_rows", st.padded_rows),
                ("_batches", st.batches),
            ):
                col = np.zeros(n, np.int64)
                col[0] = value
                out[name] = col
            out["_settings_key"] = np.array([self.settings_key] * n, dtype=object)
            out["_kernels"] = np.array([st.kernels] * n, dtype=object)
        return out


def _kill_once() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)  # atomic: exactly one actor wins
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _decode(x: Any, i: int) -> Any:
    """One cell of the image column as something :func:`diffcls_fast.images.to_pixels` takes."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        from PIL import Image, ImageOps

        try:
            im = Image.open(io.BytesIO(bytes(x)))
            im.load()
        except Exception as e:  # PIL raises many types for bad data
            raise UserError(f"row {i}: the image bytes are not a readable image ({type(e).__name__}: {e})") from None
        return ImageOps.exif_transpose(im)
    if isinstance(x, np.str_):
        return str(x)
    return x


def _portable(im: Any) -> Any:
    """An image of the eval's list as a Ray Data cell: a path as str, an 8-bit gray/RGB PIL image as its uint8 array
    (an Arrow tensor, read back as the same pixels: tested against a local eval), anything else as it is."""
    from PIL import Image

    if isinstance(im, Path):
        return str(im)
    if isinstance(im, Image.Image) and im.mode in ("L", "RGB") and not im.info.get("transparency"):
        return np.asarray(im)
    return im


def result_columns(results: Sequence[Any], top_k: int = 5) -> dict[str, np.ndarray]:
    """Column arrays (one entry per result) for a list of :class:`ClassificationResult`."""

    def objects(values: list) -> np.ndarray:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr

    tops = [r.top(top_k) for r in results]
    return {
        "label": np.array([r.label for r in results], np.int64),
        "label_name": np.array([r.label_name for r in results], dtype=object),
        "top_classes": objects([[n for n, _ in t] for t in tops]),
        "top_probabilities": objects([[float(p) for _, p in t] for t in tops]),
        "probabilities": np.stack([np.asarray(r.probabilities, np.float64) for r in results]),
        "mean_errors": np.stack([np.asarray(r.mean_errors, np.float64) for r in results]),
        "n_scores": np.stack([np.asarray(r.n_scores, np.int64) for r in results]),
        "evaluations": np.array([r.evaluations for r in results], np.int64),
        "evaluations_spent": np.array([r.evaluations_spent for r in results], np.int64),
        "seconds": np.array([r.seconds for r in results], np.float64),
        "error": objects([r.error for r in results]),
        "ood_score": np.array([np.nan if r.ood_score is None else r.ood_score for r in results], np.float64),
        "abstained": np.array([r.abstained for r in results], bool),
    }


def result_from_row(row: dict, class_names: list[str], policy: str):
    """A :class:`ClassificationResult` back from one output row (exact: the arrays are float64/int64 throughout)."""
    from ..engine.results import ClassificationResult

    err = row["error"]
    return ClassificationResult(
        label=int(row["label"]),
        label_name=str(row["label_name"]),
        class_names=list(class_names),
        probabilities=np.asarray(row["probabilities"], np.float64),
        mean_errors=np.asarray(row["mean_errors"], np.float64),
        n_scores=np.asarray(row["n_scores"], np.int64),
        evaluations=int(row["evaluations"]),
        evaluations_spent=int(row["evaluations_spent"]),
        seconds=float(row["seconds"]),
        policy=policy,
        error=(
            None if err is None or (isinstance(err, (float, np.floating)) and np.isnan(err)) else str(err)
        ),  # a block where no image failed has a null column: NaN
        ood_score=None if np.isnan(row.get("ood_score", np.nan)) else float(row["ood_score"]),
        abstained=bool(row.get("abstained", False)),
    )


def _map(
    ds,
    factory: tuple,
    classes: Any,
    *,
    concurrency: int,
    num_gpus: float,
    num_cpus: float | None,
    batch_size: int,
    column: str,
    top_k: int,
    keep_image: bool,
    max_restarts: int,
    max_task_retries: int,
    driver_columns: bool = False,
):
    ray = require_ray()
    for name, v in (("concurrency", concurrency), ("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"classify_dataset: {name} must be a positive integer, got {v!r}")
    for name, v in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)):
        if isinstance(v, bool) or not isinstance(v, int) or v < -1:
            raise UserError(f"classify_dataset: {name} must be an integer >= -1 (-1: unbounded), got {v!r}")
    if num_gpus < 0 or (num_cpus is not None and num_cpus <= 0):
        raise UserError(f"classify_dataset: num_gpus must be >= 0 and num_cpus > 0, got {num_gpus!r}, {num_cpus!r}")
    kwargs = {"num_cpus": num_cpus} if num_cpus is not None else {}
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts / max_task_retries only as **ray_remote_args (its own docstring's way, and
        # deprecated for Ray 2.64, hence the pin ray<2.64); without them it would retry without bound.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(
            ClassifyBatch,
            fn_constructor_kwargs={
                "factory": factory,
                "classes": classes,
                "column": column,
                "top_k": top_k,
                "keep_image": keep_image,
                "driver_columns": driver_columns,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_gpus=num_gpus,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
            **kwargs,
        )


def classify_dataset(
    ds: Any,
    model: str | Path = "digits",
    classes: Any = None,
    policy: str = "ttest",
    *,
    concurrency: int = 1,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 64,
    column: str = IMAGE_COLUMN,
    top_k: int = 5,
    keep_image: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    backend: str = "torch",
    max_restarts: int = 3,
    max_task_retries: int = 3,
    **engine_options: Any,
):
    """Classify the images of ``ds`` (column ``column``, default ``"image"``); returns a lazy ``ray.data.Dataset``.

    ``concurrency`` actors (each with ``num_gpus`` GPUs and ``num_cpus`` CPUs) each load
    ``model`` once; Ray Data hands them batches of ``batch_size`` rows, and each batch runs
    through the engine's continuous batching. ``engine_options`` go to
    :class:`DiffusionClassifier` (``seed``, ``loss``, ``temperature``, ``max_inflight``, policy
    options such as ``min_scores``...; its denoiser batch size is ``denoiser_batch_size``).
    Image cells: paths (str; readable on every node), encoded files (bytes), PIL images,
    HW/HWC uint8 arrays (``ray.data.read_images``), or float [C, H, W] pixels in [-1, 1].
    Output: the input's other columns (the image column only with ``keep_image``), then
    :data:`RESULT_COLUMNS`: ``label`` (class index, -1 for a failed image), ``label_name``,
    ``top_classes`` and ``top_probabilities`` (the ``top_k`` most probable), ``probabilities``,
    ``mean_errors`` (NaN where never scored) and ``n_scores`` ([C] each, class order),
    ``evaluations``, ``evaluations_spent``, ``seconds`` (latency inside its batch), ``error``
    (None unless the image failed), ``ood_score`` (NaN without an out-of-distribution rule) and ``abstained``.
    """
    require_ray()
    import inspect

    from ..engine.classifier import DiffusionClassifier
    from ..engine.options import check_scheduler_args
    from ..engine.policies import OPTIONS

    engine = dict(engine_options)
    if "denoiser_batch_size" in engine:  # batch_size is Ray's rows per call
        engine["batch_size"] = engine.pop("denoiser_batch_size")
    # Checked here, in the driver, before any actor starts: a bad option fails at once, not in every actor.
    known = (
        set(inspect.signature(DiffusionClassifier.__init__).parameters) - {"self", "model", "policy", "policy_options"}
    ) | set(OPTIONS)
    unknown = sorted(set(engine) - known)
    if unknown:
        raise TypeError(f"classify_dataset: unknown option(s): {', '.join(unknown)}")

    check_scheduler_args(
        engine.get("batch_size", 256),
        engine.get("buckets"),
        engine.get("max_inflight", 64),
        engine.get("speculate", "auto"),
    )
    factory = (build_from_options, (str(model), policy, device, dtype, backend, engine))
    return _map(
        ds,
        factory,
        classes,
        concurrency=concurrency,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        batch_size=batch_size,
        column=column,
        top_k=top_k,
        keep_image=keep_image,
        max_restarts=max_restarts,
        max_task_retries=max_task_retries,
    )


# -- eval --ray -------------------------------------------------------------------------------
@contextmanager
def driver_output() -> Iterator[None]:
    """Run a Ray-driven CLI command with only its own output on stdout.

    Ray's driver prints the cluster's error messages ("a worker died or was killed ...")
    to ``sys.stdout`` from a thread of its own, at any time, even with
    ``log_to_driver=False``. They are diagnostics, so while the command runs they
    go to stderr. If this process started or joined Ray, it leaves Ray here, before
    the caller prints its summary, so that no such line can follow the summary
    (``--json``: the summary must be the last line).
    """
    ray = require_ray()
    joined_here = not ray.is_initialized()
    stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        try:
            if joined_here and ray.is_initialized():
                ray.shutdown()
        finally:
            sys.stdout = stdout


class RayClassifier:
    """What ``eval`` needs of a classifier (see :func:`diffcls_fast.evaluate.run_eval`), with the model in Ray actors.

    A probe task with the actors' resources builds the classifier once to report its
    settings (the ``--out`` config key), so a resume is checked before any image is
    scored; every actor's own settings key is checked against it as rows come back.
    """

    def __init__(self, a: Any, noise: Any):
        ray = require_ray()
        self.a = a
        self.factory = (build_from_cli, (a, noise))
        if not ray.is_initialized():
            kw = {"address": a.ray_address} if a.ray_address else {"include_dashboard": False}
            try:
                # log_to_driver=False: the workers' log lines would land on this process's stdout and stderr at any
                # time, after the --json summary too; an actor's error comes back with its exception, and the
                # warnings a run gives (prompts cut, unknown words) are reported by the probe.
                ray.init(logging_level="ERROR", log_to_driver=False, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"--ray-address {a.ray_address}" if a.ray_address else "a local Ray instance"
                raise UserError(
                    f"{where}: Ray did not start or connect"
                    f" ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                ) from None
        data_log = logging.getLogger("ray.data")
        data_log.setLevel(logging.WARNING)  # no "execution finished" lines
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
        for h in data_log.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                # A failed batch is reported once, by eval (one line, or the traceback with --debug); Ray Data's
                # own ERROR lines about it still go to its session log file.
                h.addFilter(_below_error)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the eval's own bar counts images
        ctx.print_on_execution_start = False
        gpus = a.ray_gpus if a.ray_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
        self.resources = {"num_gpus": gpus, "num_cpus": a.ray_cpus}
        have = ray.cluster_resources()
        for what, per in (("GPU", gpus), ("CPU", a.ray_cpus)):
            # Ray would wait for resources that never come (on a fixed cluster), so say it now
            if per * a.ray_workers > have.get(what, 0):
                raise UserError(
                    f"--ray-workers {a.ray_workers} x {per:g} {what}s each needs {per * a.ray_workers:g} {what}s; the"
                    f" Ray cluster has {have.get(what, 0):g}"
                )
        self._classes = None
        self._info = None
        self.last_stats = None

    def _probe(self, classes: Any) -> dict:
        ray = require_ray()
        if self._info is None or self._classes is not classes:
            task = ray.remote(num_cpus=self.resources["num_cpus"], num_gpus=self.resources["num_gpus"], max_retries=3)(
                _probe
            )
            self._info, self._classes = ray.get(task.remote(self.factory, classes)), classes
        return self._info

    # the attributes eval reads
    def class_spec(self, classes: Any):
        info = self._probe(classes)
        from ..errors import DiffclsWarning

        for sentence in info["warnings"]:
            warnings.warn(DiffclsWarning(sentence), stacklevel=2)
        self.remote_settings = info["settings"]
        self.kernels_backend = info["kernels"]
        self.temperature, self.posterior_floor, self.policy_cfg = (
            info["temperature"],
            info["posterior_floor"],
            info["policy_cfg"],
        )
        self.model = SimpleNamespace(
            random_weights=info["random_weights"],
            describe=lambda: info["describe"],
            name=info["name"],
            backend=info["backend"],
            implementation=info["implementation"],
            device=info["device"],
        )
        return info["spec"]

    def classify_iter(self, images: Sequence[Any], classes: Any, progress: Any = None) -> Iterator[tuple[int, Any]]:
        from ..engine.results import RunStats
        from ..evaluate import config_key

        ray = require_ray()
        info = self._probe(classes)
        want = config_key(info["settings"])
        stats = self.last_stats = RunStats(
            backend=info["backend"], implementation=info["implementation"], dtype=info["dtype"], kernels=info["kernels"]
        )
        if not len(images):
            return
        items = [{"_pos": j, IMAGE_COLUMN: _portable(im)} for j, im in enumerate(images)]
        per_batch = max(
            1, min(self.a.max_inflight, -(-len(items) // self.a.ray_workers))
        )  # every worker gets work on a short run
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_batch)))
        out = _map(
            ds,
            self.factory,
            classes,
            concurrency=self.a.ray_workers,
            num_gpus=self.resources["num_gpus"],
            num_cpus=self.resources["num_cpus"],
            batch_size=per_batch,
            column=IMAGE_COLUMN,
            top_k=3,
            keep_image=False,
            max_restarts=3 if self.a.ray_max_restarts is None else self.a.ray_max_restarts,
            max_task_retries=3 if self.a.ray_max_restarts is None else self.a.ray_max_restarts,
            driver_columns=True,
        )
        names, policy = list(info["spec"].names), info["policy_cfg"].describe()
        t0 = time.perf_counter()
        for batch in _user_errors(out.iter_batches(batch_size=None, batch_format="numpy")):
            for k in range(len(batch["_pos"])):
                if batch["_settings_key"][k] != want:
                    raise UserError(
                        "a Ray worker computed different settings than the probe (other model files or diffcls-fast"
                        " version on that node?); every node needs the same model and package"
                    )
                stats.evaluations += int(batch["_evaluations"][k])
                stats.padded_rows += int(batch["_padded_rows"][k])
                stats.batches += int(batch["_batches"][k])
                stats.images += 1
                stats.seconds = time.perf_counter() - t0
                stats.kernels = self.kernels_backend = str(
                    batch["_kernels"][k]
                )  # what scored it (the probe has not scored yet)
                row = {c: batch[c][k] for c in RESULT_COLUMNS}
                if progress is not None:
                    progress.update(1)
                yield int(batch["_pos"][k]), result_from_row(row, names, policy)
        stats.seconds = time.perf_counter() - t0


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _user_errors(batches: Iterator[dict]) -> Iterator[dict]:
    """``batches``, with a :class:`UserError` raised in an actor (an unreadable image file...) raised again as a
    :class:`UserError`: the CLI prints it as one line with exit code 2, as a local eval does, not as a Ray traceback.

    Ray Data wraps the actor's exception in a ``UserCodeException`` that keeps only its text (the
    original is not in the chain), so the message is read from the remote traceback.
    """
    import re

    ray = require_ray()
    try:
        yield from batches
    except ray.exceptions.RayTaskError as e:
        found = re.findall(
            r"^diffcls_fast\.errors\.(?:UserError|BackendUnavailable|NonFiniteInput): (.+)$", str(e), flags=re.M
        )
        if found:
            raise UserError(found[-1].strip()) from None
        raise
