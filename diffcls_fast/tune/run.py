"""``diffcls-fast tune``: the command's work, from parsed arguments to the written rule."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.policies.tuned import FORMAT
from ..errors import DiffclsWarning, UserError
from .replay import Rule, band_points, prefix_sums, replay, sweep
from .select import choose, front

DEFAULT_RULE = Rule((0.15, 0.6), (2, 4, 12), (10, 3, 1))  # the halving policy's hand-chosen defaults


def check_tune_args(a: Any) -> Path:
    """Everything checkable before the model loads; returns the output path."""
    if a.data is None and a.split == "heldout":
        raise UserError(
            "tune reads only labelled tuning images: --split train or tune, or --data DIR (never held-out images)"
        )
    out = Path(a.out or f"tuned-{Path(a.model).name}.json").expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write into {parent}")
    if not 0 <= a.max_loss < 100:
        raise UserError(f"--max-loss is in accuracy points, in [0, 100); got {a.max_loss}")
    if a.folds < 2:
        raise UserError(f"--folds must be at least 2 (cross-validation), got {a.folds}")
    return out


def balanced_order(labels: np.ndarray) -> np.ndarray:
    """Indices that take the classes in turn (first image of each class, then the second, ...), keeping each
    class's own order: ``--limit N`` then tunes on every class, even on a folder read class after class."""
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    return np.lexsort((labels, rank))


def run_tune(a: Any, make_classifier: Callable[[Any], Any], progress: Callable[[int, str], Any]) -> dict:
    from ..evaluate import load_eval_split

    out = check_tune_args(a)
    images, labels, class_names, ids = load_eval_split(
        Path(a.model).name if a.data is None else a.model, a.split, a.data
    )
    labels = np.asarray(labels)
    order = balanced_order(labels)[: a.limit]
    images, labels, ids = [images[i] for i in order], labels[order], [ids[i] for i in order]
    if len(images) < 10:
        raise UserError(f"tune needs at least 10 labelled images, got {len(images)}")
    if a.budget is not None and a.budget < len(class_names):  # before scoring: no rule can be that cheap
        raise UserError(
            f"--budget {a.budget:g}: no candidate rule costs that little (the cheapest scores each of the"
            f" {len(class_names)} classes once)"
        )
    if a.data is None and a.split == "train":
        warnings.warn(
            "tuning on the model's own training images (--split train): it classifies them more easily than new"
            " images, so the chosen rule may be cheaper than new images need (fashion ships unseen ones: --split tune)",
            DiffclsWarning,
            stacklevel=2,
        )
    present = len(set(labels.tolist()))
    if present < len(class_names):
        warnings.warn(
            f"{len(class_names) - present} of the {len(class_names)} classes have no tuning image: the rule is fitted"
            " without them",
            DiffclsWarning,
            stacklevel=2,
        )
    a.policy, a.n_grid = "exhaustive", a.grid  # the tables are the exhaustive policy's, on this grid
    clf = make_classifier(a)
    if clf.model.random_weights:
        raise UserError(f"{clf.model.name} has random weights (for timing only): there is nothing to tune")
    T = clf.model.num_timesteps
    parts = Path(a.tables).expanduser() if a.tables else out.with_name(out.name + ".tables")
    tables = score_tables_for(clf, images, labels, class_names, ids, a.grid, parts, progress)
    errors, timesteps = tables["errors"], tables["timesteps"]

    t0 = time.perf_counter()
    rules, hits = [], []
    for rule, h in sweep(errors, labels, timesteps, T, repeats=a.repeats, seed=a.seed):
        rules.append(rule)
        hits.append(h)
    hits_m = np.stack(hits)
    evals = np.array([r.evaluations(len(class_names)) for r in rules], np.float64)
    acc = hits_m.mean(axis=1)
    allowed = evals <= (a.budget if a.budget is not None else np.inf)
    if not allowed.any():
        raise UserError(f"--budget {a.budget}: no candidate rule costs that little (the cheapest: {evals.min():.0f})")
    picked = choose(hits_m[allowed], evals[allowed], max_loss=a.max_loss / 100, folds=a.folds, seed=a.seed)
    index = int(np.flatnonzero(allowed)[picked["index"]])
    chosen = rules[index]
    calibration = fit_rule_calibration(errors, labels, timesteps, T, chosen, a.seed, a.loss)
    replay_seconds = time.perf_counter() - t0

    full = exhaustive_accuracy(errors, labels)
    default = rule_accuracy(errors, labels, timesteps, T, DEFAULT_RULE, a.repeats, a.seed)
    front_rows = [_row(rules[i], acc[i], evals[i]) for i in front(acc, evals)]
    result = {
        "format": FORMAT,
        "model": {"name": clf.model.name, "fingerprint": clf.model.fingerprint},
        "policy": chosen.policy(),
        "calibration": calibration,
        "tuning": {
            "images": len(images),
            "classes": len(class_names),
            "classes_present": present,
            "source": a.data or f"{a.split} split",
            "grid": a.grid,
            "seed": a.seed,
            "loss": a.loss,
            "repeats": a.repeats,
            "folds": a.folds,
            "max_loss_points": a.max_loss,
            "budget": a.budget,
            "candidates": len(rules),
            "chosen": {**_row(chosen, acc[index], evals[index]), "tolerance_points": 100 * picked["tolerance"]},
            "best": _row(rules[int(np.argmax(acc))], acc.max(), evals[int(np.argmax(acc))]),
            "exhaustive_full_grid": {"accuracy": full, "evaluations": len(class_names) * a.grid},
            "default_halving": {**_row(DEFAULT_RULE, default, DEFAULT_RULE.evaluations(len(class_names)))},
            "cross_validation": picked["cv"],
            "front": front_rows,
            "seconds_tables": round(tables["seconds"], 1),
            "images_scored": tables["scored"],
            "seconds_replay": round(replay_seconds, 1),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    result["out"] = str(out)
    return result


def score_tables_for(clf, images, labels, class_names, ids, grid, parts: Path, progress) -> dict:
    from .tables import score_tables

    return score_tables(clf, images, labels, class_names, ids, grid, parts, progress=progress)


def _row(rule: Rule, accuracy: float, evaluations: float) -> dict:
    return {
        "rule": rule.describe(),
        "policy": rule.policy(),
        "accuracy": None if accuracy is None else round(float(accuracy), 5),
        "evaluations": float(evaluations),
    }


def exhaustive_accuracy(errors: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(errors.mean(axis=2).argmin(axis=1) == labels))


def rule_accuracy(errors, labels, timesteps, T, rule: Rule, repeats: int, seed: int) -> float | None:
    points = band_points(timesteps, T, rule.band)
    if len(points) < rule.rounds[-1]:
        return None  # the grid has too few points in the band to replay it
    pred, _, _ = replay(prefix_sums(errors.astype(np.float64), points, repeats, seed), rule.rounds, rule.keep)
    return float((pred == labels[None, :]).mean())


def fit_rule_calibration(errors, labels, timesteps, T, rule: Rule, seed: int, loss: str) -> dict:
    """The posterior's temperature and floor for ``rule``, fitted on its replayed finalists' mean errors."""
    from ..engine.calibration import fit_calibration

    points = band_points(timesteps, T, rule.band)
    _, finalists, means = replay(prefix_sums(errors.astype(np.float64), points, 1, seed), rule.rounds, rule.keep)
    t, f = fit_calibration(list(means[0]), list(finalists[0]), list(labels))
    return {"temperature": t, "floor": f, "loss": loss}


def format_tune_report(r: dict) -> str:
    """The candidate rules' front, the references and the chosen rule, as a table."""
    t = r["tuning"]
    lines = [
        f"tuned on {t['images']} images ({t['source']}), {t['classes']} classes, grid {t['grid']}:"
        f" {t['candidates']} candidate rules replayed ({t['repeats']} orders each) in {t['seconds_replay']:.1f} s;"
        f" tables {t['seconds_tables']:.1f} s for {t['images_scored']} images scored in this run",
        "",
        "accuracy  evals/img  rule (the front: nothing else is both cheaper and more accurate)",
    ]
    for row in t["front"]:
        lines.append(f"  {row['accuracy']:.4f}  {row['evaluations']:9.0f}  {row['rule']}")
    full, default = t["exhaustive_full_grid"], t["default_halving"]
    lines += [
        "",
        f"reference: exhaustive over the whole grid  {full['accuracy']:.4f} at {full['evaluations']:.0f} evals",
        "reference: halving's defaults             "
        + ("n/a (too few grid points in its band)" if default["accuracy"] is None else f"{default['accuracy']:.4f}")
        + f" at {default['evaluations']:.0f} evals",
        "cross-validation (tolerance: out-of-fold accuracy, evals): "
        + ", ".join(
            f"{100 * c['tolerance']:g} pt: {c['accuracy']:.4f} {c['evaluations']:.0f}" for c in t["cross_validation"]
        ),
        f"chosen (tolerance {t['chosen']['tolerance_points']:g} pt): {t['chosen']['rule']}, accuracy"
        f" {t['chosen']['accuracy']:.4f} on the tuning images at {t['chosen']['evaluations']:.0f} evals;"
        f" temperature {r['calibration']['temperature']:.3g}, floor {r['calibration']['floor']:.3g}",
        f"wrote {r['out']}; use it: --policy tuned --tuned {r['out']}",
    ]
    return "\n".join(lines)
