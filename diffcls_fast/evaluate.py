"""``diffcls-fast eval``: accuracy on a labelled split, with resumable JSONL output."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DiffclsWarning, UserError
from .image_folder import load_image_folder

# bundled models trained on another's data, whose splits (and image ids) they share
DATA_OF = {"numbers-flow": "numbers"}


def split_name_of(model_name: str) -> str:
    """The bundled data a model is measured on: its own name, or, for a model folder a bundled recipe wrote
    (a retrained or snapshot ``numbers3``, say), the ``name`` in its ``diffcls.json``."""
    meta = Path(model_name) / "diffcls.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            name = None  # the loader reports a broken diffcls.json; here it only means "no bundled split"
        if isinstance(name, str):
            model_name = name
    return DATA_OF.get(model_name, model_name)


def load_eval_split(model_name: str, split: str, data: str | None = None):
    """(images, labels, class names, ids): an image folder, or the labelled split shipped with the package."""
    if data:
        paths, labels, classes, ids, skipped = load_image_folder(data)
        if skipped:  # said once, before the model loads: nothing leaves the run silently
            msg = f"--data {data}: {len(paths)} images; skipped {skipped.describe()}"
            warnings.warn(msg, DiffclsWarning, stacklevel=2)
        return paths, labels, classes, ids
    from .data import digits, fashion, numbers, numbers3

    data_name = split_name_of(model_name)
    if split == "tune" and data_name != "fashion":
        raise UserError(
            f"no 'tune' split ships for {model_name!r} (only fashion has images that are neither trained on nor"
            " held out); use --split train"
        )
    if data_name == "digits":
        images, labels, idx = digits.load_split(split)
        return images, labels, digits.CLASS_NAMES, [f"digits/{split}/{i}" for i in idx]
    if data_name == "numbers":
        images, labels, pair_ids = numbers.load_split(split)
        return images, labels, numbers.CLASS_NAMES, [f"numbers/{split}/{i}" for i in pair_ids]
    if data_name == "numbers3":
        images, labels, triple_ids = numbers3.load_split(split)
        return images, labels, numbers3.CLASS_NAMES, [f"numbers3/{split}/{i}" for i in triple_ids]
    if data_name == "fashion":
        images, labels, idx = fashion.load_split(split)  # idx: into Fashion-MNIST's test (heldout) or train part
        return images, labels, fashion.CLASS_NAMES, [f"fashion/{split}/{i}" for i in idx]
    raise UserError(
        f"eval: no labelled split ships for model {model_name!r} (bundled: digits, numbers, numbers-flow, numbers3,"
        " fashion); pass --data DIR (DIR/<class>/<image>)"
    )


ROW_FORMAT = 3  # bump when a row's meaning changes: older files then refuse to mix


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def eval_settings(clf: Any, spec: Any, ids: list[str], labels: np.ndarray, images: list) -> dict:
    """Everything that can change a number in an ``--out`` row, as a small JSON-able dict.

    Model weights (the bundle's fingerprint), dtype, loss, the policy with its options (those
    of other policies are recorded but ignored when rows are compared: :func:`same_settings`),
    seed, the saved noise (a hash of its values), the temperature, the classes and their
    prompts (content, not the CSV's path), and the data: every image id of the split
    (before --limit, so a longer run resumes a shorter one), its label and, for files, its
    size. Not in it, since they change no result: batch size, max in-flight, speculation
    (they change ``evaluations_spent`` and ``seconds`` only). Backend, device and kernels
    are recorded in each row but are not in it: they agree within floating-point tolerance.
    """
    return {**classifier_settings(clf, spec), "data": data_digest(ids, labels, images)}


def classifier_settings(clf: Any, spec: Any) -> dict:
    """The part of :func:`eval_settings` that depends on the classifier (all but the data)."""

    remote = getattr(
        clf, "remote_settings", None
    )  # a classifier whose model lives elsewhere (Ray actors) computed them there
    if remote is not None:
        return dict(remote)
    return {
        "format": ROW_FORMAT,
        "model": clf.model.fingerprint,
        "dtype": str(clf.model.dtype).removeprefix("torch."),
        "loss": clf.loss,
        "policy": clf.policy_cfg.to_dict(),
        "seed": int(clf.seed),
        "noise": noise_digest(clf),
        "temperature": float(clf.temperature),
        "posterior_floor": float(clf.posterior_floor),
        "classes": digest([spec.names, spec.prompts, [np.asarray(c).tolist() for c in spec.class_prompts]]),
    }


def data_digest(ids: list[str], labels: np.ndarray, images: list) -> str:
    """Every image id of the split, its label and, for files, its size."""
    sizes = [_file_size(p) if isinstance(p, (str, Path)) else None for p in images]
    return digest([list(ids), [int(x) for x in labels], sizes])


def noise_digest(clf: Any) -> str | None:
    """A hash of the saved noise tensor's values (None: the seeded generator)."""
    saved = getattr(getattr(clf, "bank", None), "saved", None)
    return (
        None
        if saved is None
        else hashlib.sha256(saved.contiguous().numpy().tobytes() + str(tuple(saved.shape)).encode()).hexdigest()[:16]
    )


def _file_size(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:  # gone or unreadable: reported when the image is decoded
        return None


def config_key(settings: dict) -> str:
    return digest(settings)


def same_settings(old: Any, new: Any) -> bool:
    """Whether two rows' settings give the same numbers: equal, but for the options of policies
    other than the one that ran (``--n-grid`` under ``--policy ttest`` changes nothing)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False

    def comparable(s: dict) -> dict:
        from .engine.policies import used_options  # only when two configs differ

        return {**s, "policy": used_options(s["policy"])} if isinstance(s.get("policy"), dict) else s

    return comparable(old) == comparable(new)


def settings_diff(old: Any, new: dict) -> str:
    if not isinstance(old, dict):
        return "written by an older diffcls-fast"
    keys = [k for k in new if old.get(k) != new[k]]
    return (
        ", ".join(
            f"{k} {old.get(k)!r} -> {new[k]!r}" if k not in ("classes", "data", "noise", "model") else f"{k} changed"
            for k in keys
        )
        or "unknown"
    )


class OutFile:
    """An ``eval --out`` JSONL file, opened, locked and parsed before any model is loaded.

    The file is held under an advisory lock (``flock``, non-blocking) from opening to
    :meth:`close`: a second eval on the same file stops with one line instead of
    computing every image twice. A torn last line (a killed writer) is cut off under the
    lock; any other malformed line is a :class:`UserError` naming ``file:line``.

    ``readonly=True`` (``merge``) reads without changing the file: no write access is
    needed, the lock is shared (a file still being written by an eval is refused, two
    merges may read it at once) and a torn last line is skipped, not cut off.
    """

    CLASSIFY_ROW = (("id", str), ("config", str), ("correct", int), ("evaluations_spent", int))

    def __init__(self, path: str | Path, required: tuple[tuple[str, type], ...] = CLASSIFY_ROW, readonly: bool = False):
        self.path = Path(path)
        self.required = required
        self.readonly = readonly
        self.fd: int | None = None
        self.rows: dict[str, tuple[int, dict]] = {}
        p = self.path
        if p.is_dir():
            raise UserError(f"--out {p}: is a folder; give a file path, e.g. {p / 'results.jsonl'}")
        if p.exists() and not p.is_file():  # a pipe or device: it cannot be read back (and opening a FIFO blocks)
            raise UserError(f"--out {p}: not a regular file; --out needs a file it can read back to resume")
        parent = p.parent
        if not parent.exists():
            raise UserError(f"--out {p}: no such folder {parent}")
        if not parent.is_dir():
            raise UserError(f"--out {p}: {parent} is not a folder")
        try:
            self.fd = os.open(p, os.O_RDONLY) if readonly else os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(
                f"{p}: cannot read ({e.strerror or e})" if readonly else f"--out {p}: cannot write ({e.strerror or e})"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):  # a pipe or device cannot be read back to resume
                raise UserError(f"--out {p}: not a regular file; --out needs a file it can read back to resume")
            self._lock()
            self._read()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): concurrent writers are not detected
            return
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _flock_holder(self.fd)
            who = f" (pid {pid})" if pid else ""
            if self.readonly:
                raise UserError(f"{self.path}: is being written by an eval{who}; wait for it to finish") from None
            raise UserError(
                f"--out {self.path}: is being written by another eval{who}; wait for it to finish, or use another --out"
            ) from None
        except OSError as e:  # a filesystem without flock (some network mounts): go on, unprotected
            import sys

            print(
                f"diffcls-fast: warning: --out {self.path}: cannot lock ({e.strerror or e}); a concurrent eval on it"
                " would not be detected",
                file=sys.stderr,
            )

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"--out {self.path}: cannot read ({e.strerror or e})") from None
        # A damaged file is refused: eval would append to it, merge would read wrong rows from it.
        refuse = (
            "merge reads only eval --out files" if self.readonly else "refusing to append to it (use another --out)"
        )
        good_end = data.rfind(b"\n") + 1
        if (
            good_end < len(data) and not self.readonly
        ):  # a killed writer left a partial line: drop it (we hold the lock)
            os.ftruncate(self.fd, good_end)
        where = f"{self.path}"
        for lineno, raw in enumerate(data[:good_end].split(b"\n")[:-1], start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}:{lineno}: not UTF-8 text; {refuse}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{where}:{lineno}: not a JSON line; {refuse}") from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{where}:{lineno}: a JSON {type(row).__name__}, not an eval row (a JSON object); {refuse}"
                )
            for key, kind in self.required:
                value = row.get(key)
                if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                    got = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r}"[:60]
                    raise UserError(f"{where}:{lineno}: not an eval row: {key!r} is {got}; {refuse}")
            self.rows[row["id"]] = (lineno, row)

    def done(self, config: str, settings: dict) -> dict[str, dict]:
        """The rows already written, after checking each was computed with these settings."""
        for _, (lineno, row) in sorted(self.rows.items(), key=lambda kv: kv[1][0]):
            if row["config"] != config and not same_settings(row.get("settings"), settings):
                why = settings_diff(row.get("settings"), settings)
                raise UserError(
                    f"{self.path}:{lineno}: written with different settings ({why}); use another --out, or rerun with"
                    " the same settings"
                )
        return {k: row for k, (_, row) in self.rows.items()}

    def check_shard(self, shard: Any) -> None:
        """A shard refuses a file holding rows of another shard or of an unsharded run: appending its rows to it
        makes a part that ``merge`` later refuses as an overlap. An unsharded run takes any rows of its own run
        (a merged file resumes). Rows written before rows recorded their shard pass."""
        if shard is None:
            return
        want = str(shard)
        for _, (lineno, row) in sorted(self.rows.items(), key=lambda kv: kv[1][0]):
            if "shard" not in row:
                continue
            got, index = row["shard"], row.get("index")
            owned = not isinstance(index, int) or shard.owns(index)
            if got != want or not owned:
                whose = f"shard {got}" if got else "an unsharded run"
                raise UserError(
                    f"{self.path}:{lineno}: a row of {whose} (image {row['id']}), but this is shard {want}; every shard"
                    " needs its own --out part (eval --shard names it OUT.shard-I-of-N.jsonl)"
                )

    def append(self, row: dict) -> None:
        if self.readonly:
            raise ValueError(f"{self.path} was opened read-only")
        append_line(self.fd, row)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _flock_holder(fd: int) -> int | None:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux); None when unknown."""
    try:
        ino = os.fstat(fd).st_ino
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                pid, dev_ino = parts[4], parts[5]
                if dev_ino.rsplit(":", 1)[-1] == str(ino) and pid.isdigit() and int(pid) != os.getpid():
                    return int(pid)
    except OSError:
        return None
    return None


FAILED_RULE = "a failed image counts as wrong with a uniform posterior (1/C per class) in accuracy, ECE and NLL"


def calibration_point(row: dict) -> tuple[float, int, float]:
    """(top-1 confidence, correct, p(true class)) of one eval row, for ECE and NLL. One rule for every metric: a
    failed image (no posterior: a non-finite score) is a wrong answer with the uniform posterior 1/C, so accuracy,
    ECE and NLL all cover the same images (``FAILED_RULE``)."""
    if row.get("error"):
        n = len(row.get("n_scores") or row.get("mean_errors") or {}) or 1
        return 1.0 / n, 0, 1.0 / n
    return float(row["confidence"]), int(row["correct"]), float(row["p_true"])


def metrics(points: list[tuple[float, int, float]]) -> dict:
    """accuracy, ECE (top-1 confidence, 15 bins) and NLL over ``points`` from :func:`calibration_point`."""
    from .engine.calibration import ece, nll

    conf, corr, p_true = (np.array(v) for v in zip(*points)) if points else (np.zeros(0),) * 3
    return {
        "accuracy": float(np.mean(corr)) if points else 0.0,
        "ece": round(ece(conf, corr), 5),
        "nll": round(nll(p_true), 5),
    }


def append_line(fd: int, row: dict) -> None:
    # One write() of a whole line on an O_APPEND descriptor: a killed run never leaves half a line.
    os.write(fd, (json.dumps(row) + "\n").encode("utf-8"))


def run_eval(a: Any, make_classifier: Callable, progress: Callable) -> dict:
    """Every input (split, --limit, --prompts, --out) is checked before ``make_classifier`` loads the model."""
    if str(a.model).startswith("preset:"):
        raise UserError(f"{a.model} has random weights (timing only); eval refuses to report accuracy on it")
    if a.limit is not None and a.limit < 1:
        raise UserError(f"--limit must be >= 1, got {a.limit}")
    images, labels, class_names, ids = load_eval_split(a.model, a.split, getattr(a, "data", None))
    all_images, all_ids = images, ids
    classes = class_names
    if getattr(a, "prompts", None):
        from .engine import read_prompts_csv

        spec = read_prompts_csv(a.prompts).check_fits(a.batch_size)
        if sorted(spec.names) != sorted(class_names):
            raise UserError(
                f"{a.prompts}: its class names {spec.names[:5]}... do not match the data's classes {class_names[:5]}..."
            )
        order = {n: i for i, n in enumerate(spec.names)}
        labels = np.array([order[class_names[k]] for k in labels])
        classes = spec
    all_labels = labels
    if a.limit is not None:
        images, labels, ids = images[: a.limit], labels[: a.limit], ids[: a.limit]
    # Position of each image in the run (the split after --limit); a shard takes its interleaved slice of them.
    total = len(images)
    positions = list(range(total))
    shard = getattr(a, "shard_spec", None)
    if shard is not None:
        positions = shard.select(positions)
        images, labels, ids = [images[i] for i in positions], labels[positions], [ids[i] for i in positions]
    out = OutFile(a.out) if a.out else None  # opened and locked until the end of the run
    try:
        if out is not None:
            out.check_shard(shard)
        if not positions:  # more shards than images: this one has nothing to do, and loads no model
            return empty_shard_summary(a, shard, total)
        where = {"positions": positions, "total": total, "shard": None if shard is None else str(shard)}
        return _run_eval(
            a, make_classifier, progress, out, images, labels, ids, classes, (all_images, all_labels, all_ids), where
        )
    finally:
        if out is not None:
            out.close()


def empty_shard_summary(a: Any, shard: Any, total: int) -> dict:
    """The summary of a shard that got no images (``--shard I/N`` with fewer than I+1 images in the run)."""
    return {
        **metrics([]),
        "images": 0,
        "scored": 0,
        "failed": 0,
        "first_error": None,
        "resumed": 0,
        "split": None if getattr(a, "data", None) else a.split,
        "data": str(a.data) if getattr(a, "data", None) else None,
        "shard": str(shard),
        "run_images": total,
        "out_of_distribution": None,
        "note": f"shard {shard} has no images: the run has {total} image(s), fewer than {shard.index + 1}",
        **dict.fromkeys(SCORING_KEYS),
    }


# Keys of the summary that describe this process's scoring: null when it scored nothing (all resumed, empty shard).
SCORING_KEYS = (
    "evals_per_image",
    "evals_spent_per_image",
    "seconds",
    "batch_fill",
    "evals_per_second",
    "images_per_second",
    "temperature",
    "posterior_floor",
    "policy",
    "backend",
    "implementation",
    "kernels",
    "dtype",
    "model",
)


def _run_eval(
    a: Any,
    make_classifier: Callable,
    progress: Callable,
    out: OutFile | None,
    images,
    labels,
    ids,
    classes,
    full,
    where: dict,
) -> dict:
    from . import kernels

    clf = make_classifier(a)
    spec = clf.class_spec(classes)  # first: a classifier on Ray knows its model only once it has probed it
    if clf.model.random_weights:
        raise UserError(f"{clf.model.describe()}: refusing to report accuracy for random weights")
    all_images, all_labels, all_ids = full
    settings = eval_settings(clf, spec, all_ids, all_labels, all_images)
    config = config_key(settings)
    done = out.done(config, settings) if out else {}
    n_classes = len(spec.names)
    todo = [i for i in range(len(images)) if ids[i] not in done]
    # evals: what the decision rule needed (the accuracy tables' "needed" column: speculation and
    # batching never change it); spent: what was scored, speculation included
    resumed_rows = [done[ids[i]] for i in range(len(images)) if ids[i] in done]
    evals = [int(r.get("evaluations", r["evaluations_spent"])) for r in resumed_rows]
    spent = [int(r["evaluations_spent"]) for r in resumed_rows]
    resumed = len(resumed_rows)
    points = [calibration_point(r) for r in resumed_rows]  # (confidence, correct, p(true)) for every image
    flags = [r.get("out_of_distribution") for r in resumed_rows]  # None: no rule for this model and policy
    ran_on = {
        "backend": clf.model.backend,
        "implementation": clf.model.implementation,
        "device": str(clf.model.device),
        "dtype": settings["dtype"],
    }  # informational
    positions, total, shard = where["positions"], where["total"], where["shard"]
    errors = [done[ids[i]]["error"] for i in range(len(images)) if ids[i] in done and done[ids[i]].get("error")]
    t0 = time.perf_counter()
    bar = progress(len(todo), f"eval {a.split}")
    try:
        for j, r in clf.classify_iter([images[i] for i in todo], classes, progress=bar):
            i = todo[j]
            # A failed image (a non-finite score) is recorded with its error; the run goes on. It counts as a
            # wrong answer with the uniform posterior in every metric (FAILED_RULE).
            ok = int(r.error is None and r.label == int(labels[i]))
            evals.append(r.evaluations)
            spent.append(r.evaluations_spent)
            p_true = float(r.probabilities[int(labels[i])]) if r.error is None else 1.0 / n_classes
            confidence = float(r.probabilities.max()) if r.error is None else 1.0 / n_classes
            if r.error is not None:
                errors.append(r.error)
            points.append((confidence, ok, p_true))
            flags.append(r.out_of_distribution)
            if out is not None:
                row = {
                    "id": ids[i],
                    "config": config,
                    "true_label": int(labels[i]),
                    "correct": ok,
                    "p_true": p_true,
                    "confidence": confidence,
                    **r.to_dict(top_k=3),
                }
                # index / total / shard: where the image sits in the run, so `diffcls-fast merge` can find gaps
                # without the model
                row.update(index=positions[i], total=total, shard=shard)
                out.append(
                    {
                        **row,
                        **ran_on,
                        "kernels": getattr(clf, "kernels_backend", None) or kernels.active_backend(),
                        "settings": settings,
                    }
                )
    finally:
        bar.close()
    st = clf.last_stats
    scored = len(todo)
    summary = {
        **metrics(points),
        "images": len(points),
        "scored": scored,  # images scored by this process; the rest were resumed from --out
        # images the model's out-of-distribution rule flagged (still counted by their label); None: no rule
        "out_of_distribution": None if all(f is None for f in flags) else sum(bool(f) for f in flags),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "resumed": resumed,
        "split": None if getattr(a, "data", None) else a.split,
        "data": str(a.data) if getattr(a, "data", None) else None,
        "shard": shard,
        "evals_per_image": float(np.mean(evals)) if evals else 0.0,
        "evals_spent_per_image": float(np.mean(spent)) if spent else 0.0,
        "seconds": round(time.perf_counter() - t0, 3),
        "batch_fill": round(st.batch_fill, 4),
        "evals_per_second": round(st.evals_per_second, 1),
        "images_per_second": round(st.images_per_second, 3),
        "temperature": clf.temperature,
        "posterior_floor": clf.posterior_floor,
        "policy": clf.policy_cfg.describe(),
        "backend": st.backend or clf.model.backend,  # a run that scored nothing has empty stats
        "implementation": st.implementation or clf.model.implementation,
        "kernels": st.kernels,
        "dtype": st.dtype,
        "model": clf.model.name,
    }
    if not scored:  # every row came from --out: this process measured no speed
        summary.update(dict.fromkeys(("seconds", "batch_fill", "evals_per_second", "images_per_second", "kernels")))
    return summary
