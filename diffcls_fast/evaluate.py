"""``diffcls-fast eval``: accuracy on a labelled split, with resumable JSONL output."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def load_image_folder(root: str | Path):
    """An ImageFolder layout: ``root/<class name>/<image>``; classes in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such data folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise UserError(f"{root}: no images found")
    return paths, np.array(labels), classes, [str(p.relative_to(root)) for p in paths]


def load_eval_split(model_name: str, split: str, data: str | None = None):
    """(images, labels, class names, ids): an image folder, or the labelled split shipped with the package."""
    if data:
        return load_image_folder(data)
    from .data import digits, numbers

    if model_name == "digits":
        images, labels, idx = digits.load_split(split)
        return images, labels, digits.CLASS_NAMES, [f"digits/{split}/{i}" for i in idx]
    if model_name == "numbers":
        images, labels, pair_ids = numbers.load_split(split)
        return images, labels, numbers.CLASS_NAMES, [f"numbers/{split}/{i}" for i in pair_ids]
    raise UserError(f"eval: no labelled split ships for model {model_name!r} (bundled: digits, numbers); pass --data DIR (DIR/<class>/<image>)")


def _config_key(a: Any) -> str:
    keys = ("model", "data", "prompts", "policy", "seed", "loss", "n_grid", "n_samples", "to_keep", "min_scores", "max_scores", "cutoff_pval", "sides", "t_order", "noise_path")
    blob = json.dumps({k: getattr(a, k, None) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_done(path: Path, config: str) -> dict[str, dict]:
    """Rows already written by earlier runs with the same settings. A torn last line is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data):  # a killed writer left a partial line: drop it
        with open(path, "r+b") as f:
            f.truncate(good_end)
    done = {}
    for lineno, line in enumerate(data[:good_end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno}: not a JSON line; refusing to append to it") from None
        if row.get("config") != config:
            raise UserError(f"{path}: written with different settings (config {row.get('config')} != {config}); use another --out")
        done[row["id"]] = row
    return done


def append_line(fd: int, row: dict) -> None:
    # One write() of a whole line on an O_APPEND descriptor: a killed run never leaves half a line.
    os.write(fd, (json.dumps(row) + "\n").encode("utf-8"))


def run_eval(a: Any, make_classifier: Callable, progress: Callable) -> dict:
    if str(a.model).startswith("preset:"):
        raise UserError(f"{a.model} has random weights (timing only); eval refuses to report accuracy on it")
    images, labels, class_names, ids = load_eval_split(a.model, a.split, getattr(a, "data", None))
    if a.limit is not None:
        if a.limit < 1:
            raise UserError("--limit must be >= 1")
        images, labels, ids = images[: a.limit], labels[: a.limit], ids[: a.limit]
    classes = class_names
    if getattr(a, "prompts", None):
        from .engine import read_prompts_csv

        spec = read_prompts_csv(a.prompts)
        if sorted(spec.names) != sorted(class_names):
            raise UserError(f"{a.prompts}: its class names {spec.names[:5]}... do not match the data's classes {class_names[:5]}...")
        order = {n: i for i, n in enumerate(spec.names)}
        labels = np.array([order[class_names[k]] for k in labels])
        classes = spec
    clf = make_classifier(a)
    if clf.model.random_weights:
        raise UserError(f"{clf.model.describe()}: refusing to report accuracy for random weights")
    config = _config_key(a)
    out_path = Path(a.out) if a.out else None
    done = read_done(out_path, config) if out_path else {}
    todo = [i for i in range(len(images)) if ids[i] not in done]
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if out_path else None
    correct = [int(done[ids[i]]["correct"]) for i in range(len(images)) if ids[i] in done]
    evals = [int(done[ids[i]]["evaluations_spent"]) for i in range(len(images)) if ids[i] in done]
    t0 = time.perf_counter()
    bar = progress(len(todo), f"eval {a.split}")
    try:
        for j, r in clf.classify_iter([images[i] for i in todo], classes, progress=bar):
            i = todo[j]
            ok = int(r.label == int(labels[i]))
            correct.append(ok)
            evals.append(r.evaluations_spent)
            if fd is not None:
                append_line(fd, {"id": ids[i], "config": config, "true_label": int(labels[i]), "correct": ok, **r.to_dict(top_k=3)})
    finally:
        bar.close()
        if fd is not None:
            os.close(fd)
    st = clf.last_stats
    n = len(correct)
    return {
        "accuracy": float(np.mean(correct)) if n else 0.0,
        "images": n,
        "resumed": len(done),
        "split": a.split,
        "evals_per_image": float(np.mean(evals)) if evals else 0.0,
        "seconds": round(time.perf_counter() - t0, 3),
        "batch_fill": round(st.batch_fill, 4),
        "evals_per_second": round(st.evals_per_second, 1),
        "images_per_second": round(st.images_per_second, 3),
        "policy": clf.policy_cfg.describe(),
        "backend": st.backend,
        "kernels": st.kernels,
        "dtype": st.dtype,
        "model": clf.model.name,
    }
