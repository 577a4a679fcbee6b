"""On-disk cache of prompt embeddings, keyed by (text-encoder fingerprint, prompt).

Each prompt's embedding is one small safetensors file, written atomically
(temporary file, then rename), so concurrent runs and killed runs never leave a
half-written entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def default_cache_dir() -> Path:
    env = os.environ.get("DIFFCLS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffcls-fast"


class EmbeddingCache:
    def __init__(self, cache_dir: str | Path | None, fingerprint: str):
        self.root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "embeddings" / fingerprint
        self.hits = 0
        self.misses = 0

    def _path(self, prompt: str) -> Path:
        return self.root / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32] + ".safetensors")

    def get(self, prompts: Sequence[str], encode: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
        """Embeddings of ``prompts`` stacked [K, ...], encoding (and storing) only the missing ones."""
        found: dict[int, torch.Tensor] = {}
        for i, pr in enumerate(prompts):
            p = self._path(pr)
            if p.is_file():
                try:
                    entry = load_file(p)
                except (OSError, SafetensorError):
                    continue  # unreadable entry: recompute and overwrite it below
                sha = entry.get("prompt_sha")
                if sha is not None and bytes(sha.tolist()) == hashlib.sha256(pr.encode("utf-8")).digest():
                    found[i] = entry["embedding"]
        missing = [i for i in range(len(prompts)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            enc = encode([prompts[i] for i in missing]).detach().cpu()
            self.root.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(missing):
                found[i] = enc[j].contiguous()
                self._store(prompts[i], found[i])
        return torch.stack([found[i] for i in range(len(prompts))])

    def _store(self, prompt: str, emb: torch.Tensor) -> None:
        sha = torch.frombuffer(bytearray(hashlib.sha256(prompt.encode("utf-8")).digest()), dtype=torch.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embedding": emb, "prompt_sha": sha}, tmp)
            os.replace(tmp, self._path(prompt))
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
