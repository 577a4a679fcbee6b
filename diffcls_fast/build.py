"""From options to a classifier: load the model, put it on its backend, build the classifier.

The one path that ``diffcls-fast`` (every subcommand that scores), the server and the
Ray workers all take, so that a classifier never depends on which door built it.
:func:`check_engine_args` checks everything that needs no model first (a load takes
seconds, so a bad ``--device`` or ``--noise-path`` costs nothing).
"""

from __future__ import annotations

import argparse
from typing import Any

from .arguments import policy_options, warn_unread_policy_options
from .errors import UserError


def build_classifier(
    model: str,
    policy: str = "ttest",
    *,
    device: str | None = None,
    dtype: str | None = "auto",
    backend: str = "torch",
    xformers: bool = False,
    **engine: Any,
):
    """A :class:`DiffusionClassifier` on ``backend``; ``engine`` holds the constructor's other keywords."""
    from .engine import DiffusionClassifier
    from .engine.options import check_scheduler_args
    from .export import apply_backend
    from .models import load_model

    buckets = check_scheduler_args(  # before the model loads
        engine.get("batch_size", 256),
        engine.get("buckets"),
        engine.get("max_inflight", 64),
        engine.get("speculate", "auto"),
    )
    # The native modules run the eager path; the backends that trace or compile the network (and xformers, a
    # diffusers attention processor) get the diffusers modules, which their exports were built and checked on.
    eager = backend == "torch" and not xformers
    m = load_model(model, device=device, dtype=dtype, implementation="auto" if eager else "diffusers")
    m = apply_backend(m, backend, batch_sizes=buckets, cache_dir=engine.get("cache_dir"), xformers=xformers)
    return DiffusionClassifier(m, policy, **engine)


def classifier_from_args(a: argparse.Namespace, noise: Any = None):
    """The classifier the command line asks for (``a``: the parsed arguments; ``noise``: a saved noise tensor)."""
    return build_classifier(
        a.model,
        a.policy,
        device=a.device,
        dtype=a.dtype,
        backend=a.backend,
        xformers=a.xformers,
        batch_size=a.batch_size,
        max_inflight=a.max_inflight,
        seed=a.seed,
        loss=a.loss,
        temperature=a.temperature,
        abstain_ood=bool(getattr(a, "abstain_ood", False)),
        speculate=a.speculate,
        overlap={"on": True, "off": False}.get(a.overlap, a.overlap),
        cache_dir=a.cache_dir,
        use_cache=not a.no_cache,
        noise=noise,
        **policy_options(a),
    )


def check_engine_args(a: argparse.Namespace):
    """Everything about the engine options that can be checked without the model; returns the saved
    noise (or None). Runs before any model is loaded."""
    from .models.common import resolve_device, resolve_dtype

    dev = resolve_device(a.device)
    resolve_dtype(a.dtype, dev)
    check_backend(a.backend, a.xformers, dev, a.cache_dir)
    cfg = None
    if getattr(a, "policy", None) is not None:
        from .engine.noise import check_seed
        from .engine.policies import PolicyConfig

        check_seed(a.seed)
        cfg = PolicyConfig(name=a.policy, **policy_options(a))
        warn_unread_policy_options(a)
        try:
            cfg.validate(None)  # all but the bounds that need the model's T (checked when the classifier is made)
        except ValueError as e:
            raise UserError(str(e)) from None
    if a.noise_path is None:
        return None
    from .engine.noise import load_noise_file

    noise = load_noise_file(a.noise_path)[0]
    if cfg is not None:
        from .engine.options import check_noise_rows

        check_noise_rows(noise.shape[0], cfg, None, where=f"{a.noise_path}: ")  # the counts need no T
    return noise


def check_backend(backend: str, xformers: bool, dev, cache_dir: str | None = None) -> None:
    from .errors import BackendUnavailable

    if backend == "onnx":
        from .export.onnx_export import require_onnx, require_onnxruntime

        require_onnx()
        require_onnxruntime()
    elif backend == "tensorrt":
        from .export.tensorrt_backend import require_tensorrt

        require_tensorrt()
        if dev.type != "cuda":
            raise BackendUnavailable("the tensorrt backend needs a CUDA device")
    elif backend == "aoti":
        from .export.aoti_export import require_aoti

        require_aoti()
        if dev.type != "cpu":
            raise BackendUnavailable("the aoti backend is built and tested for the CPU here; use --device cpu")
    if backend in ("onnx", "tensorrt", "aoti"):  # they write their artifacts under the cache folder
        from .export.backends import artifact_dir
        from .export.onnx_export import writable_dir

        writable_dir(artifact_dir(cache_dir))
    if xformers:
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise BackendUnavailable("xformers is not installed; pip install 'diffcls-fast[xformers]'") from None
        if dev.type != "cuda":
            raise BackendUnavailable("xformers attention needs a CUDA device")
