"""``diffcls-fast eval --task swap``: Winoground-style scores on a bundled swap set.

Each group is two images and two captions, caption j describing image j (for
``numbers``: images "a b" and "b a", captions "the digits a b" and "the digits
b a", a != b, held-out digits only). Every group's 2x2 matrix of mean errors
comes from :func:`iter_match_groups` (exhaustive on the ``--n-grid`` grid, one
engine run for all groups), and its text, image and group scores from
:mod:`engine.winoground`. ``--out FILE.jsonl`` gets one line per group and
resumes like the classification eval.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError
from .evaluate import append_line, read_done

SWAP_SETS = ("numbers",)


def load_swap_set(model_name: str) -> list[dict]:
    """The bundled swap groups of a model: dicts with ``id``, ``images`` (2), ``captions`` (2)."""
    if model_name == "numbers":
        from .data import numbers

        return numbers.load_swap_groups()
    raise UserError(f"eval --task swap: no swap set ships for model {model_name!r} (bundled: {', '.join(SWAP_SETS)})")


def _config_key(a: Any) -> str:
    keys = ("model", "seed", "loss", "n_grid", "noise_path", "shared_noise")
    blob = json.dumps({"task": "swap", **{k: getattr(a, k, None) for k in keys}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_swap_eval(a: Any, make_classifier: Callable, progress: Callable) -> dict:
    from .engine.match import iter_match_groups
    from .engine.winoground import WinogroundScores, summarize, winoground_from_errors

    if str(a.model).startswith("preset:"):
        raise UserError(f"{a.model} has random weights (timing only); eval refuses to report scores on it")
    if getattr(a, "data", None) or getattr(a, "prompts", None):
        raise UserError("eval --task swap uses the model's bundled swap set; --data and --prompts are for --task classify")
    groups = load_swap_set(str(a.model))
    if a.limit is not None:
        if a.limit < 1:
            raise UserError("--limit must be >= 1")
        groups = groups[: a.limit]
    clf = make_classifier(a)
    if clf.model.random_weights:
        raise UserError(f"{clf.model.describe()}: refusing to report scores for random weights")
    shared = bool(getattr(a, "shared_noise", False))
    config = _config_key(a)
    out_path = Path(a.out) if a.out else None
    done = read_done(out_path, config) if out_path else {}
    todo = [g for g in groups if g["id"] not in done]
    scores = [WinogroundScores(bool(done[g["id"]]["text"]), bool(done[g["id"]]["image"]), bool(done[g["id"]]["group"])) for g in groups if g["id"] in done]
    evals = [int(done[g["id"]]["evaluations"]) for g in groups if g["id"] in done]
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if out_path else None
    t0 = time.perf_counter()
    bar = progress(2 * len(todo), "eval swap")
    try:
        for k, res in iter_match_groups(clf, [(g["images"], g["captions"]) for g in todo], n_grid=a.n_grid, shared_noise=shared, progress=bar):
            w = winoground_from_errors(res.errors)
            scores.append(w)
            evals.append(res.evaluations)
            if fd is not None:
                row = {"id": todo[k]["id"], "config": config, "captions": res.captions, "errors": res.to_dict()["errors"], **w.to_dict()}
                append_line(fd, {**row, "evaluations": res.evaluations, "seconds": round(res.seconds, 4)})
    finally:
        bar.close()
        if fd is not None:
            os.close(fd)
    st = clf.last_stats
    return {
        "task": "swap",
        **summarize(scores),
        "resumed": len(done),
        "evals_per_group": sum(evals) / len(evals) if evals else 0.0,
        "seconds": round(time.perf_counter() - t0, 3),
        "batch_fill": round(st.batch_fill, 4),
        "evals_per_second": round(st.evals_per_second, 1),
        "n_grid": a.n_grid,
        "shared_noise": shared,
        "policy": f"exhaustive(grid={a.n_grid})",
        "backend": st.backend,
        "kernels": st.kernels,
        "dtype": st.dtype,
        "model": clf.model.name,
    }


def format_summary(s: dict) -> str:
    return (
        f"swap ({s['groups']} groups, n_grid {s['n_grid']}{', shared noise' if s['shared_noise'] else ''}): "
        f"text {s['text_score']:.4f} ({s['text_correct']}), image {s['image_score']:.4f} ({s['image_correct']}), "
        f"group {s['group_score']:.4f} ({s['group_correct']}); {s['evals_per_group']:.1f} evals/group, {s['seconds']:.1f} s, "
        f"batch fill {s['batch_fill']:.3f}, {s['evals_per_second']:.0f} evals/s [{s['backend']}, kernels {s['kernels']}]"
    )
