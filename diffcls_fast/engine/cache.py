"""On-disk cache of prompt embeddings, keyed by (text-encoder fingerprint, prompt).

Each prompt's embedding is one small safetensors file, written atomically
(temporary file, then rename), so concurrent runs and killed runs never leave a
half-written entry.

An entry is trusted only if it proves what it holds: its metadata names the
prompt (in full) and the encoder key (text-encoder fingerprint, dtype, device
type), and its ``embedding`` tensor has the expected shape, a floating dtype and
finite values. Anything else (a torn or foreign file, another prompt's entry
under this name, a folder where the file should be) is recomputed and, when
the folder is writable, rewritten. A cache folder that cannot be written (read
only, or a file in the way) costs one :class:`DiffclsWarning` (the CLI prints it as
one line on stderr; a library user can filter or record it); the run goes on
without storing entries.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DiffclsWarning

FORMAT = "diffcls-fast/embedding/2"
_warned: set[str] = set()  # one warning per cache folder per process


def default_cache_dir() -> Path:
    env = os.environ.get("DIFFCLS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffcls-fast"


def _warn_once(where: Path, what: str) -> None:
    if str(where) in _warned:
        return
    _warned.add(str(where))
    warnings.warn(DiffclsWarning(f"embedding cache {where}: {what}"), stacklevel=3)


class EmbeddingCache:
    """Prompt embeddings on disk under ``cache_dir/embeddings/<fingerprint>/``.

    ``fingerprint`` identifies everything besides the prompt that changes an
    embedding (the classifier passes the text-encoder fingerprint with the dtype
    and device type). ``shape``, when given, is the shape of one embedding.
    """

    def __init__(self, cache_dir: str | Path | None, fingerprint: str, shape: Sequence[int] | None = None):
        self.fingerprint = str(fingerprint)
        self.root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "embeddings" / self.fingerprint
        self.shape = tuple(int(s) for s in shape) if shape else None
        self.writable = True
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries present but not trusted (recomputed)

    def _path(self, prompt: str) -> Path:
        return self.root / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32] + ".safetensors")

    def get(self, prompts: Sequence[str], encode: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
        """Embeddings of ``prompts`` stacked [K, ...], encoding (and storing) only the missing ones."""
        found: dict[int, torch.Tensor] = {}
        for i, pr in enumerate(prompts):
            emb = self._read(pr)
            if emb is not None:
                found[i] = emb
        missing = [i for i in range(len(prompts)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            enc = encode([prompts[i] for i in missing]).detach().cpu()
            for j, i in enumerate(missing):
                found[i] = enc[j].contiguous()
                self._store(prompts[i], found[i])
        return torch.stack([found[i] for i in range(len(prompts))])

    def _read(self, prompt: str) -> torch.Tensor | None:
        """The stored embedding of ``prompt``, or None when there is none or it fails a check."""
        p = self._path(prompt)
        try:
            if not p.exists():
                return None
            if not p.is_file():
                self.rejected += 1  # e.g. a folder in the way: recomputed; _store says if it cannot replace it
                return None
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if "embedding" not in f.keys():
                    self.rejected += 1
                    return None
                emb = f.get_tensor("embedding")
        except (OSError, SafetensorError, ValueError, RuntimeError):
            self.rejected += 1  # unreadable or not safetensors: recompute and overwrite
            return None
        ok = (
            meta.get("format") == FORMAT
            and meta.get("prompt") == prompt
            and meta.get("fingerprint") == self.fingerprint
            and emb.is_floating_point()
            and (self.shape is None or tuple(emb.shape) == self.shape)
            and bool(torch.isfinite(emb).all())
        )
        if not ok:
            self.rejected += 1
            return None
        return emb

    def _store(self, prompt: str, emb: torch.Tensor) -> None:
        if not self.writable:
            return
        meta = {"format": FORMAT, "prompt": prompt, "fingerprint": self.fingerprint}
        dst = self._path(prompt)
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            os.close(fd)
            save_file({"embedding": emb}, tmp, metadata=meta)
        except OSError as e:
            self.writable = False
            _warn_once(self.root, f"cannot write ({e.strerror or e}); running without storing embeddings")
        else:
            try:
                if dst.is_dir():
                    dst.rmdir()  # an empty folder in the way; a non-empty one is left alone (below)
                os.replace(tmp, dst)
                tmp = None
            except OSError as e:
                _warn_once(dst, f"cannot replace this entry ({e.strerror or e}); it is recomputed on every run")
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
