"""Cheap, stable fingerprints of model folders.

Hashing a 3 GB checkpoint on every start would cost seconds, so a file is
identified by its name, size, and the SHA-256 of its first and last MiB. Config
files are hashed whole. That distinguishes any two real checkpoints while
costing milliseconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def fingerprint_paths(*dirs: Path) -> str:
    h = hashlib.sha256()
    for d in dirs:
        d = Path(d)
        files = sorted(p for p in d.rglob("*") if p.is_file()) if d.is_dir() else [d]
        for p in files:
            rel = p.relative_to(d.parent).as_posix()
            size = p.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with open(p, "rb") as f:
                if size <= 2 * _CHUNK:
                    h.update(f.read())
                else:
                    h.update(f.read(_CHUNK))
                    f.seek(size - _CHUNK)
                    h.update(f.read(_CHUNK))
    return h.hexdigest()[:20]
