"""The embedding cache: bad folders cost one warning, bad entries are recomputed, wrong entries never trusted."""

import hashlib
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from diffcls_fast.engine.cache import FORMAT, EmbeddingCache

SHAPE = (4, 3)
FP = "textfp-float32-cpu"


class Encoder:
    """A deterministic stand-in text encoder that records what it was asked to encode."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def one(prompt):
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
        return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return torch.stack([self.one(p) for p in prompts])


def _cache(root):
    return EmbeddingCache(root, FP, shape=SHAPE)


def _warm(root, prompts=("a cat", "a dog")):
    enc = Encoder()
    _cache(root).get(list(prompts), enc)
    return enc


def test_entries_are_reused_and_carry_prompt_and_fingerprint(tmp_path):
    _warm(tmp_path)
    c, enc = _cache(tmp_path), Encoder()
    out = c.get(["a dog", "a cat"], enc)
    assert enc.calls == [] and c.hits == 2
    torch.testing.assert_close(out[0], Encoder.one("a dog"), rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(c._path("a dog")), "pt") as f:
        assert f.metadata() == {"format": FORMAT, "prompt": "a dog", "fingerprint": FP}


def _rewrite(c, prompt, tensors, meta):
    save_file(tensors, str(c._path(prompt)), metadata=meta)


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "empty",
        "no_embedding_key",
        "wrong_shape",
        "int_dtype",
        "nan",
        "inf",
        "old_format",
        "other_fingerprint",
        "other_prompt",
        "directory",
    ],
)
def test_bad_entry_is_recomputed_and_rewritten(tmp_path, case, recwarn):
    _warm(tmp_path)
    c = _cache(tmp_path)
    p = c._path("a cat")
    good = {"format": FORMAT, "prompt": "a cat", "fingerprint": FP}
    emb = Encoder.one("a cat")
    if case == "garbage":
        p.write_bytes(b"not a safetensors file")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "no_embedding_key":
        _rewrite(c, "a cat", {"other": emb}, good)
    elif case == "wrong_shape":
        _rewrite(c, "a cat", {"embedding": torch.zeros(5, 3)}, good)
    elif case == "int_dtype":
        _rewrite(c, "a cat", {"embedding": torch.zeros(SHAPE, dtype=torch.int32)}, good)
    elif case == "nan":
        _rewrite(c, "a cat", {"embedding": emb.clone().index_fill_(0, torch.tensor([1]), float("nan"))}, good)
    elif case == "inf":
        _rewrite(c, "a cat", {"embedding": emb.clone().index_fill_(0, torch.tensor([0]), float("inf"))}, good)
    elif case == "old_format":  # the first format: a prompt hash tensor, no metadata
        sha = torch.frombuffer(bytearray(hashlib.sha256(b"a cat").digest()), dtype=torch.uint8)
        save_file({"embedding": emb, "prompt_sha": sha}, str(p))
    elif case == "other_fingerprint":
        _rewrite(c, "a cat", {"embedding": torch.zeros(SHAPE)}, {**good, "fingerprint": "another-encoder"})
    elif case == "other_prompt":  # a valid-looking entry of another prompt under this prompt's name
        shutil.copyfile(c._path("a dog"), p)
    elif case == "directory":
        p.unlink()
        p.mkdir()
    enc = Encoder()
    out = c.get(["a cat", "a dog"], enc)
    assert enc.calls == [["a cat"]]  # recomputed; the good entry is still used
    assert c.rejected == 1 and c.hits == 1
    torch.testing.assert_close(out[0], emb, rtol=0, atol=0)
    assert _cache_warnings(recwarn) == []  # nothing to warn about: the entry was replaced
    # ... and rewritten: the next run trusts it
    enc2 = Encoder()
    _cache(tmp_path).get(["a cat"], enc2)
    assert enc2.calls == []


def test_unicode_prompt_round_trips(tmp_path):
    _warm(tmp_path, ["un café noir", "猫の写真"])
    enc = Encoder()
    _cache(tmp_path).get(["猫の写真", "un café noir"], enc)
    assert enc.calls == []


def _cache_warnings(rec) -> list[str]:
    """The DiffclsWarning messages recorded (``warnings.catch_warnings(record=True)``), one line each."""
    from diffcls_fast import DiffclsWarning

    msgs = [str(w.message) for w in rec if issubclass(w.category, DiffclsWarning)]
    assert all("\n" not in m for m in msgs)
    return msgs


def test_non_empty_directory_in_place_of_an_entry_warns_once_and_runs(tmp_path, recwarn):
    _warm(tmp_path)
    c = _cache(tmp_path)
    p = c._path("a cat")
    p.unlink()
    p.mkdir()
    (p / "something").write_text("not ours to delete")
    for _ in range(2):
        out = c.get(["a cat", "a dog"], Encoder())
        torch.testing.assert_close(out[0], Encoder.one("a cat"), rtol=0, atol=0)
    err = _cache_warnings(recwarn)
    assert len(err) == 1 and "cannot replace" in err[0], err
    assert (p / "something").is_file()


def test_cache_path_that_is_a_file_warns_once_and_runs_without_cache(tmp_path, recwarn):
    f = tmp_path / "cachefile"
    f.write_text("I am a file")
    for _ in range(3):
        enc = Encoder()
        out = EmbeddingCache(f, FP, shape=SHAPE).get(["a cat", "a dog"], enc)
        assert enc.calls == [["a cat", "a dog"]]
        torch.testing.assert_close(out[1], Encoder.one("a dog"), rtol=0, atol=0)
    err = _cache_warnings(recwarn)
    assert len(err) == 1 and err[0].startswith("embedding cache") and "cannot write" in err[0], err
    assert f.read_text() == "I am a file"


def test_read_only_cache_folder_warns_once_and_still_reads(tmp_path, recwarn, monkeypatch):
    _warm(tmp_path)  # "a cat", "a dog" are stored
    import diffcls_fast.engine.cache as cache_mod

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", denied)  # as a read-only folder answers (root ignores chmod)
    for _ in range(2):
        enc = Encoder()
        out = _cache(tmp_path).get(["a cat", "a bird", "a fish"], enc)
        assert enc.calls == [["a bird", "a fish"]]  # stored entries are still used
        torch.testing.assert_close(out[2], Encoder.one("a fish"), rtol=0, atol=0)
    err = _cache_warnings(recwarn)
    assert len(err) == 1 and "Permission denied" in err[0], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_folder_real_chmod(tmp_path, recwarn):
    _warm(tmp_path)
    root = _cache(tmp_path).root
    root.chmod(0o555)
    try:
        enc = Encoder()
        _cache(tmp_path).get(["a cat", "a bird"], enc)
        assert enc.calls == [["a bird"]]
    finally:
        root.chmod(0o755)
    assert len(_cache_warnings(recwarn)) == 1


def test_dtype_and_device_are_part_of_the_key():
    from types import SimpleNamespace

    from diffcls_fast.engine.options import embedding_key

    m = SimpleNamespace(text_fingerprint="abc", dtype=torch.float16, device=torch.device("cpu"))
    assert embedding_key(m) == "abc-float16-cpu"
    assert embedding_key(SimpleNamespace(**{**vars(m), "dtype": torch.float32})) != embedding_key(m)


def test_cli_prints_a_cache_warning_as_one_line(tmp_path):
    """Through the CLI the DiffclsWarning is the usual one line on stderr, and the run succeeds."""
    import subprocess
    import sys

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffcls_fast.cli",
            "classify",
            "examples/digit-7.png",
            "--policy",
            "halving",
            "--cache-dir",
            str(blocker),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "embedding cache" in ln]
    assert (
        len(lines) == 1 and lines[0].startswith("diffcls-fast: warning: embedding cache") and "cannot write" in lines[0]
    ), r.stderr
