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

import time
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .evaluate import DATA_OF, OutFile, digest, noise_digest

SWAP_ROW = (("id", str), ("config", str), ("text", bool), ("image", bool), ("group", bool), ("evaluations", int))

SWAP_SETS = ("numbers", "numbers-flow")


def load_swap_set(model_name: str) -> list[dict]:
    """The bundled swap groups of a model: dicts with ``id``, ``images`` (2), ``captions`` (2)."""
    if DATA_OF.get(model_name, model_name) == "numbers":
        from .data import numbers

        return numbers.load_swap_groups()
    raise UserError(f"eval --task swap: no swap set ships for model {model_name!r} (bundled: {', '.join(SWAP_SETS)})")


def swap_settings(clf: Any, groups: list[dict], n_grid: int, shared: bool) -> dict:
    """Everything that can change a number in a swap row (as the classification eval's settings)."""
    return {
        "task": "swap",
        "model": clf.model.fingerprint,
        "dtype": str(clf.model.dtype).removeprefix("torch."),
        "loss": clf.loss,
        "n_grid": int(n_grid),
        "shared_noise": shared,
        "seed": int(clf.seed),
        "noise": noise_digest(clf),
        "groups": digest([[g["id"], g["captions"]] for g in groups]),
    }


def run_swap_eval(a: Any, make_classifier: Callable, progress: Callable) -> dict:

    if str(a.model).startswith("preset:"):
        raise UserError(f"{a.model} has random weights (timing only); eval refuses to report scores on it")
    if getattr(a, "data", None) or getattr(a, "prompts", None):
        raise UserError(
            "eval --task swap uses the model's bundled swap set; --data and --prompts are for --task classify"
        )
    all_groups = load_swap_set(str(a.model))
    if a.limit is not None and a.limit < 1:
        raise UserError("--limit must be >= 1")
    groups = all_groups[: a.limit] if a.limit else all_groups
    out = OutFile(a.out, required=SWAP_ROW) if a.out else None  # checked and locked before the model loads
    try:
        return _run_swap(a, make_classifier, progress, out, groups, all_groups)
    finally:
        if out is not None:
            out.close()


def _run_swap(
    a: Any,
    make_classifier: Callable,
    progress: Callable,
    out: OutFile | None,
    groups: list[dict],
    all_groups: list[dict],
) -> dict:
    from .engine.winoground import WinogroundScores, summarize, winoground_from_errors

    clf = make_classifier(a)
    if clf.model.random_weights:
        raise UserError(f"{clf.model.describe()}: refusing to report scores for random weights")
    shared = bool(getattr(a, "shared_noise", False))
    settings = swap_settings(clf, all_groups, a.n_grid, shared)
    config = digest(settings)
    done = out.done(config, settings) if out else {}
    todo = [g for g in groups if g["id"] not in done]
    scores = [
        WinogroundScores(bool(done[g["id"]]["text"]), bool(done[g["id"]]["image"]), bool(done[g["id"]]["group"]))
        for g in groups
        if g["id"] in done
    ]
    evals = [int(done[g["id"]]["evaluations"]) for g in groups if g["id"] in done]
    t0 = time.perf_counter()
    bar = progress(2 * len(todo), "eval swap")
    try:
        for k, res in clf.match_groups(
            [(g["images"], g["captions"]) for g in todo], n_grid=a.n_grid, shared_noise=shared, progress=bar
        ):
            w = winoground_from_errors(res.errors)
            scores.append(w)
            evals.append(res.evaluations)
            if out is not None:
                row = {
                    "id": todo[k]["id"],
                    "config": config,
                    "captions": res.captions,
                    "errors": res.to_dict()["errors"],
                    **w.to_dict(),
                    **({"failures": res.failures} if res.failed else {}),
                }
                out.append(
                    {**row, "evaluations": res.evaluations, "seconds": round(res.seconds, 4), "settings": settings}
                )
    finally:
        bar.close()
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
        f"swap ({s['groups']} groups, n_grid {s['n_grid']}{', shared noise' if s['shared_noise'] else ''}): text"
        f" {s['text_score']:.4f} ({s['text_correct']}), image {s['image_score']:.4f} ({s['image_correct']}), group"
        f" {s['group_score']:.4f} ({s['group_correct']}); {s['evals_per_group']:.1f} evals/group, {s['seconds']:.1f} s,"
        f" batch fill {s['batch_fill']:.3f}, {s['evals_per_second']:.0f} evals/s [{s['backend']}, kernels"
        f" {s['kernels']}]"
    )
