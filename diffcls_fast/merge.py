"""``diffcls-fast merge OUT.jsonl PARTS...``: join the ``--out`` parts of a sharded eval.

Every row of an ``eval --out`` file records its settings key (``config``), its place in
the run (``index`` in the split after ``--limit``, ``total`` images in the run) and its
``shard``. Merge refuses parts with other settings, an image in two parts (an overlap)
and a missing image (a gap: a shard not run, not finished, or not given), without the
model; it writes the rows in split order and reports what ``eval --json`` reports,
computed from the rows (the timings of a distributed run are not in them: null).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluate import OutFile, append_line, calibration_point, metrics, same_settings, settings_diff


def _ranges(xs: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, xs[:limit]))
    return shown + (f" and {len(xs) - limit} more" if len(xs) > limit else "")


def read_parts(parts: list[str | Path]) -> list[tuple[Path, int, dict]]:
    """(part, line number, row) of every row, each part read under a shared lock (a shard still writing is
    refused) and left as it is: a torn last line (a killed shard) is skipped, so its image shows as a gap."""
    rows = []
    for part in map(Path, parts):
        if not part.is_file():
            raise UserError(f"{part}: no such file" if not part.exists() else f"{part}: not a regular file")
        f = OutFile(part, readonly=True)
        try:
            rows += [(part, lineno, row) for _, (lineno, row) in sorted(f.rows.items(), key=lambda kv: kv[1][0])]
        finally:
            f.close()
    return rows


def check_rows(rows: list[tuple[Path, int, dict]]) -> list[dict]:
    """The rows in split order, after the settings, overlap and gap checks (a :class:`UserError` naming part and
    line)."""
    if not rows:
        raise UserError("merge: the parts hold no rows")
    part0, line0, ref = rows[0]
    by_index: dict[int, tuple[Path, int, dict]] = {}
    by_id: dict[str, tuple[Path, int]] = {}
    for part, lineno, row in rows:
        if row["config"] != ref["config"] and not same_settings(ref.get("settings"), row.get("settings")):
            why = (
                settings_diff(ref.get("settings"), row.get("settings"))
                if isinstance(row.get("settings"), dict)
                else "written by an older diffcls-fast"
            )
            raise UserError(
                f"{part}:{lineno}: written with different settings than {part0}:{line0} ({why}); merge only shards of"
                " one run"
            )
        index, total = row.get("index"), row.get("total")
        if not (isinstance(index, int) and isinstance(total, int)) or isinstance(index, bool) or not 0 <= index < total:
            raise UserError(
                f"{part}:{lineno}: the row has no valid index/total (written by an older diffcls-fast?); rerun that"
                " eval into a new --out"
            )
        if row["id"] in by_id:
            other, other_line = by_id[row["id"]]
            raise UserError(
                f"image {row['id']} is in {other}:{other_line} and {part}:{lineno}: the parts overlap (a part given"
                " twice, or shards of different splits?)"
            )
        if index in by_index:
            other, other_line, _ = by_index[index]
            raise UserError(
                f"{part}:{lineno} and {other}:{other_line} both hold image {index} of the run under different ids: not"
                " shards of the same split"
            )
        by_id[row["id"]] = (part, lineno)
        by_index[index] = (part, lineno, row)
    total = max(r["total"] for _, _, r in rows)  # a shard resumed with a larger --limit: the run is the largest
    missing = [i for i in range(total) if i not in by_index]
    if missing:
        counts = sorted(
            {int(r["shard"].split("/")[1]) for _, _, r in rows if isinstance(r.get("shard"), str) and "/" in r["shard"]}
        )
        hint = ""
        if len(counts) == 1:
            n = counts[0]
            absent = sorted({i % n for i in missing})
            names = ", ".join(f"{k}/{n}" for k in absent)
            hint = f"; they belong to shard {names}: give its part, or rerun it (a shard resumes from its part)"
            if len(absent) > 1:
                hint = (
                    f"; they belong to shards {names}: give their parts, or rerun them (a shard resumes from its part)"
                )
        raise UserError(
            f"merge: {len(missing)} of the run's {total} images are in no part (indexes {_ranges(missing)}){hint}"
        )
    return [by_index[i][2] for i in range(total)]


def summarize(rows: list[dict]) -> dict:
    """``eval --json``'s summary from rows (timings and batch fill are not in rows: null)."""
    evals = [int(r.get("evaluations", r["evaluations_spent"])) for r in rows]  # needed by the rule, as eval reports
    spent = [int(r["evaluations_spent"]) for r in rows]
    errors = [r["error"] for r in rows if r.get("error")]
    settings = rows[0].get("settings") or {}
    shards = sorted({r.get("shard") for r in rows}, key=str)
    head = rows[0]["id"].split("/")
    bundled = (
        head[:2] if len(head) == 3 and head[0] in ("digits", "numbers", "numbers3", "fashion") else None
    )  # ids of a bundled split: model/split/n
    return {
        **metrics([calibration_point(r) for r in rows]),  # failed images: FAILED_RULE, as eval counts them
        "images": len(rows),
        "scored": None,  # not in the rows
        "out_of_distribution": (
            None
            if all(r.get("out_of_distribution") is None for r in rows)
            else sum(bool(r.get("out_of_distribution")) for r in rows)
        ),
        "temperature": settings.get("temperature"),
        "posterior_floor": settings.get("posterior_floor"),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "resumed": 0,
        "split": bundled[1] if bundled else None,
        "data": None,  # a folder eval's rows do not record the folder
        "shard": None,
        "evals_per_image": float(np.mean(evals)) if evals else 0.0,
        "evals_spent_per_image": float(np.mean(spent)) if spent else 0.0,
        "seconds": None,
        "batch_fill": None,
        "evals_per_second": None,
        "images_per_second": None,
        "policy": rows[0].get("policy"),
        "backend": rows[0].get("backend"),
        "implementation": rows[0].get("implementation"),
        "kernels": rows[0].get("kernels"),
        "dtype": rows[0].get("dtype"),
        "model": bundled[0] if bundled else None,
        "parts_shards": [s for s in shards if s is not None],
    }


def check_existing_out(out: Path, rows: list[dict], overwrite: bool) -> None:
    """Refuse to replace a file that is not an earlier merge of this run (``--overwrite`` allows it): merging
    into the wrong path must not destroy an unrelated file."""
    if overwrite or not out.exists() or out.stat().st_size == 0:
        return
    why = None
    try:
        old = OutFile(out, readonly=True)
    except UserError:
        why = "it is not an eval results file"
    else:
        old.close()
        ref = rows[0]
        other = next(
            (
                row
                for _, row in old.rows.values()
                if row["config"] != ref["config"] and not same_settings(ref.get("settings"), row.get("settings"))
            ),
            None,
        )
        if other is not None:
            why = "it holds results of another run"
    if why:
        raise UserError(f"merge: {out} exists and {why}; give another path, or --overwrite to replace it")


def merge_parts(out: str | Path, parts: list[str | Path], overwrite: bool = False) -> dict:
    """Check the parts, write ``out`` (rows in split order; replaced atomically) and return the summary.

    An existing ``out`` is replaced only when it holds rows of the same run (an earlier merge), or with
    ``overwrite``."""
    out = Path(out)
    for p in map(Path, parts):
        if p.exists() and out.exists() and os.path.samefile(p, out):
            raise UserError(f"merge: {out} is also one of the parts; write the merged file elsewhere")
    if out.is_dir():
        raise UserError(f"merge: {out} is a folder; give a file path, e.g. {out / 'results.jsonl'}")
    if not out.parent.is_dir():
        raise UserError(f"merge: no such folder {out.parent}")
    if out.exists() and not out.is_file():
        raise UserError(f"merge: {out} is not a regular file; give a file path")
    rows = check_rows(read_parts(parts))
    check_existing_out(out, rows, overwrite)
    tmp = out.with_name(f".{out.name}.merge-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:  # a read-only mount, /proc, a folder without write permission
        raise UserError(f"merge: cannot write {out} ({e.strerror or e})") from None
    try:
        for r in rows:
            append_line(fd, r)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, out)
    except OSError as e:  # a full disk, a file system without rename
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise UserError(f"merge: cannot write {out} ({e.strerror or e})") from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return summarize(rows)


def format_summary(s: dict) -> str:
    return (
        f"accuracy {s['accuracy']:.4f} on {s['images']} images ({s['split'] or 'folder'}), ECE {s['ece']:.4f}, NLL"
        f" {s['nll']:.4f}, {s['evals_per_image']:.1f} evals/image ({s['evals_spent_per_image']:.1f} spent)"
        f" [{s['backend']}, kernels {s['kernels']}; merged from shards"
        f" {', '.join(s['parts_shards']) or '(none: unsharded)'}]"
    )
