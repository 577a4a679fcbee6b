"""``eval --data DIR``: the images of an ImageFolder layout, ``DIR/<class>/.../<image>``, and what was left out.

Nothing is dropped without a word. Every file with an image suffix under a class folder is an image of that class,
nested subfolders included (as torchvision's ImageFolder does); one that is gone or unreadable (a broken symlink, a
symlink loop, a truncated file) stays in the run and fails its own row, as documented. What is not an image is
skipped and counted by reason: files with other suffixes, hidden entries, files outside class folders, folders
reached twice through symlinks, special files.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class Skipped(Counter):
    """Reason -> count of the entries an image-folder scan left out."""

    def describe(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.items(), key=lambda kv: (-kv[1], kv[0])))


def _scan(folder: Path, seen: set[tuple[int, int]], skipped: Skipped) -> list[Path]:
    """Image paths under ``folder`` (recursively, sorted), counting what is skipped."""
    found = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        p = Path(e.path)
        if e.name.startswith("."):  # .ipynb_checkpoints/, .DS_Store, macOS ._x.png: not data
            skipped["hidden entries"] += 1
            continue
        image_name = p.suffix.lower() in IMAGE_SUFFIXES
        try:
            st = os.stat(p)  # follows symlinks
        except OSError as err:  # a broken symlink or a symlink loop
            if image_name:
                found.append(p)  # it stays in the run: its row fails, saying why
            else:
                why = "symlink loops" if err.errno == errno.ELOOP else "broken symlinks"
                skipped[f"{why} without an image suffix"] += 1
            continue
        if os.path.isdir(p):
            key = (st.st_dev, st.st_ino)
            if key in seen:  # a symlink back up the tree, or two links to one folder: scan it once
                skipped["folders reached twice through symlinks"] += 1
                continue
            seen.add(key)
            found += _scan(p, seen, skipped)
        elif not os.path.isfile(p):
            skipped["special files (pipes, devices, sockets)"] += 1
        elif image_name:
            found.append(p)
        else:
            skipped[f"files with other suffixes ({p.suffix or 'none'})"] += 1
    return found


def load_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str], list[str], Skipped]:
    """(paths, labels, class names, ids, skipped) of ``root/<class name>/.../<image>``; classes in sorted order,
    each class's images in sorted path order; ids are the paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such data folder")
    skipped = Skipped()
    classes = []
    for e in sorted(root.iterdir()):
        if e.name.startswith("."):
            skipped["hidden entries"] += 1
        elif e.is_dir():
            classes.append(e.name)
        else:
            skipped["files outside class folders"] += 1
    if not classes:
        raise UserError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    paths, labels = [], []
    seen = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    for k, c in enumerate(classes):
        st = os.stat(root / c)
        if (st.st_dev, st.st_ino) in seen:  # two class names for one folder: its images would be in both
            raise UserError(f"{root / c}: the same folder as another class (a symlink); give each class its own")
        seen.add((st.st_dev, st.st_ino))
        files = _scan(root / c, seen, skipped)
        paths += files
        labels += [k] * len(files)
    if not paths:
        extra = f" (skipped: {skipped.describe()})" if skipped else ""
        raise UserError(f"{root}: no images found{extra}; image suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}")
    return paths, np.array(labels), classes, [str(p.relative_to(root)) for p in paths], skipped
