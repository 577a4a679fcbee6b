"""Candidate classes and their prompts (one or several per class)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


@dataclass
class ClassSpec:
    names: list[str]  # one per class
    prompts: list[str]  # every distinct prompt (or class-id string for class-conditional models)
    class_prompts: list[np.ndarray]  # class c is scored with prompts[class_prompts[c]]

    def __len__(self) -> int:
        return len(self.names)

    def validate(self) -> ClassSpec:
        """A spec built by hand (not by the readers below) is checked like theirs: names, one prompt
        list per class, prompt ids inside ``prompts``; a UserError naming the first problem."""
        if (
            not isinstance(self.names, list)
            or not isinstance(self.prompts, list)
            or not isinstance(self.class_prompts, list)
        ):
            raise UserError("a ClassSpec holds lists: names, prompts, class_prompts")
        if any(not isinstance(n, str) for n in self.names):
            raise UserError("ClassSpec.names must be strings")
        _check_names(self.names)
        if any(not isinstance(p, str) or not p for p in self.prompts):
            raise UserError("ClassSpec.prompts must be non-empty strings")
        if len(self.class_prompts) != len(self.names):
            raise UserError(
                f"ClassSpec has {len(self.names)} names but {len(self.class_prompts)} class_prompts entries"
            )
        for c, ids in enumerate(self.class_prompts):
            ids = np.asarray(ids)
            if ids.ndim != 1:
                raise UserError(f"class_prompts[{c}] must be a 1-D list of prompt ids, got shape {list(ids.shape)}")
            if ids.size == 0:
                raise UserError(f"class {self.names[c]!r} has no prompt (class_prompts[{c}] is empty)")
            if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self.prompts):
                raise UserError(
                    f"class_prompts[{c}] must index ClassSpec.prompts (0..{len(self.prompts) - 1}), got {ids.tolist()}"
                )
        return self

    def check_fits(self, max_batch: int) -> ClassSpec:
        """Every prompt of a class is scored in one denoiser batch (the class's error at a sample
        is the mean over its prompts): a class with more prompts than the largest batch could
        never be scheduled. Refused up front, naming the class and the batch size to ask for."""
        sizes = [len(np.asarray(ids)) for ids in self.class_prompts]
        worst = int(np.argmax(sizes)) if sizes else 0
        if sizes and sizes[worst] > max_batch:
            raise UserError(
                f"class {self.names[worst]!r} has {sizes[worst]} prompts, more than the largest denoiser batch"
                f" ({max_batch} rows); all of a class's prompts are scored in one batch: raise the batch size"
                f" (--batch-size) to at least {sizes[worst]}, or use fewer prompts"
            )
        return self

    @classmethod
    def from_names(cls, names: Sequence[str], template: str = "{}") -> ClassSpec:
        names = [n.strip() for n in names]
        _check_names(names)
        prompts = [template.format(n) for n in names]
        return cls(list(names), prompts, [np.array([i]) for i in range(len(names))])

    @classmethod
    def from_prompts(cls, names: Sequence[str], prompts: Sequence[str]) -> ClassSpec:
        """One prompt per class, given explicitly."""
        _check_names(list(names))
        if len(names) != len(prompts):
            raise UserError(f"{len(names)} class names but {len(prompts)} prompts")
        return cls(list(names), list(prompts), [np.array([i]) for i in range(len(names))])


def _check_names(names: list[str]) -> None:
    if not names or all(not n for n in names):
        raise UserError("the class list is empty")
    blank = [i for i, n in enumerate(names) if not n]
    if blank:
        raise UserError(f"class {blank[0]} has an empty name")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise UserError(f"duplicate class name {n!r} (classes {seen[n]} and {i})")
        seen[n] = i


def parse_class_list(text: str, template: str = "{}") -> ClassSpec:
    """``"zero,one,two"`` -> a ClassSpec (a trailing comma or surrounding spaces are tolerated)."""
    parts = [p.strip() for p in text.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    return ClassSpec.from_names(parts, template)


def read_prompts_csv(path: str | Path) -> ClassSpec:
    """Read the official repo's prompt CSV: columns ``classidx,prompt`` and optionally ``classname``.

    Several rows may share a class index (a prompt ensemble, scored as the mean
    over its prompts). Class indices must cover 0..K-1.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such prompts file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read prompts file ({e})") from None
    # csv over the text itself (newline=""), not over str.splitlines(): a quoted prompt may hold a line
    # break (kept, not glued to the next word), and splitlines would also break rows at U+2028 or \x85.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        numbered = [(reader.line_num, row) for row in reader]  # line_num: the line a record ends on
    except csv.Error as e:
        raise UserError(f"{p}:{reader.line_num}: not valid CSV ({e})") from None
    rows = [row for _, row in numbered]
    if not rows:
        raise UserError(f"{p}: empty prompts file")
    header = [h.strip().lower() for h in rows[0]]
    if "classidx" not in header or "prompt" not in header:
        raise UserError(
            f"{p}: header must have columns classidx,prompt (and optionally classname), got {','.join(rows[0])}"
        )
    ci, pi = header.index("classidx"), header.index("prompt")
    ni = header.index("classname") if "classname" in header else None
    by_class: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for lineno, row in numbered[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{p}:{lineno}: expected {len(header)} columns, got {len(row)}")
        try:
            k = int(row[ci])
        except ValueError:
            raise UserError(f"{p}:{lineno}: classidx {row[ci]!r} is not an integer") from None
        if k < 0:
            raise UserError(f"{p}:{lineno}: classidx {k} is negative")
        prompt = row[pi].strip()
        if not prompt:
            raise UserError(f"{p}:{lineno}: empty prompt")
        by_class.setdefault(k, []).append(prompt)
        if ni is not None:
            name = row[ni].strip()
            if not name:
                raise UserError(f"{p}:{lineno}: empty classname")
            if names.setdefault(k, name) != name:
                raise UserError(f"{p}:{lineno}: class {k} is named both {names[k]!r} and {name!r}")
    if not by_class:
        raise UserError(f"{p}: no prompts (the class list is empty)")
    n = max(by_class) + 1
    missing = [k for k in range(n) if k not in by_class]
    if missing:
        raise UserError(f"{p}: classidx values must cover 0..{n - 1}; missing {missing[:5]}")
    class_names = [names.get(k, by_class[k][0]) for k in range(n)]
    _check_names(class_names)
    prompts: list[str] = []
    index: dict[str, int] = {}
    class_prompts = []
    for k in range(n):
        ids = []
        for pr in by_class[k]:
            if pr not in index:
                index[pr] = len(prompts)
                prompts.append(pr)
            ids.append(index[pr])
        class_prompts.append(np.array(sorted(set(ids))))
    return ClassSpec(class_names, prompts, class_prompts)
