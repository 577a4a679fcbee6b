"""The native word-level tokenizer gives the transformers tokenizer's ids, as the prompt encoder calls it
(padding to and truncating at the model's length, special tokens added), and the same unknown words."""

from __future__ import annotations

import random
import string
from functools import cache

import pytest
import torch

from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.native import load_native
from diffcls_fast.models.text_to_image import make_unknown_word_finder

from .reference import NATIVE_BUNDLED

MAX_LEN = 16

PROMPTS = [
    "a handwritten digit seven",
    "",
    " ",
    "\t\n",
    "seven",
    "SEVEN",
    "A Handwritten DIGIT Seven",
    "a handwritten digit sevn",  # unknown word
    "left seven and right two",
    "7",
    "77 7 0.5 3,4",
    "seven, eight; nine!",
    "seven!!!eight???",
    "digit_seven",  # _ is a word character
    "snake_case and kebab-case",
    "(seven)",
    "[seven]",
    "[UNK] seven",  # the unknown token itself, matched before lowercasing
    "[unk] seven",  # lowercase: not the added token, so [ unk ] as three pieces
    "[PAD][BOS]seven[EOS]",
    "seven[UNK]eight",
    "[[UNK]]",
    "a photo of the number seven.",
    "  leading and trailing  ",
    "tab\tseparated\nlines\r\nhere",
    "form\x0cfeed and vertical\x0btab",
    "file\x1cseparator\x1dgroup\x1erecord\x1funit",  # not whitespace to the tokenizer (Python's split says so)
    "nul\x00char and bell\x07",
    "~`!@#$%^&*()-=+{}|\\:\"';<>?,./",
    " ".join(["seven"] * 14),  # exactly fills 16 with the special tokens
    " ".join(["seven"] * 15),  # one over: truncated
    " ".join(["seven", "eight"] * 40),  # far over
    "seven " * 30 + "[EOS]",
    "café seven",  # beyond ASCII: the library tokenizer answers
    "ｓｅｖｅｎ",
    "seven\u00a0eight",  # no-break space
    "İstanbul seven",
    "e\u0301 seven",  # combining accent
]


@cache
def tokenizers(model: str):
    from transformers import AutoTokenizer

    folder = BUNDLED[model]
    parts = load_native(folder / "unet", folder / "text_encoder", folder / "tokenizer", torch.float32)
    assert not isinstance(parts, str), parts
    return parts.tokenizer, AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)


def _library_ids(tok, prompts):
    return tok(list(prompts), padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids


def _random_prompts(model: str, n: int, seed: int) -> list[str]:
    """Vocabulary words, unknown words, digits, punctuation and every ASCII whitespace, mixed."""
    native, _ = tokenizers(model)
    rng = random.Random(seed)
    words = [w for w in native.vocab if w.isalnum()] + ["zebra", "Seven", "SEVEN", "x1", "_", "[UNK]", "[EOS]"]
    pieces = words * 3 + list(string.punctuation) + list(string.digits) + ["\x1c", "\x00", "\x7f"]
    seps = [" ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", ""]
    return ["".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(0, 24))) for _ in range(n)]


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_same_ids_as_the_library_tokenizer(model):
    native, library = tokenizers(model)
    prompts = PROMPTS + _random_prompts(model, 400, seed=len(model))
    got, want = native.encode(prompts, MAX_LEN), _library_ids(library, prompts)
    for i, p in enumerate(prompts):
        assert got[i].tolist() == want[i].tolist(), p
    assert got.dtype == want.dtype == torch.int64


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_every_ascii_character_alone_and_between_words(model):
    native, library = tokenizers(model)
    prompts = [chr(c) for c in range(128)] + [f"seven{chr(c)}eight" for c in range(128)]
    assert native.encode(prompts, MAX_LEN).tolist() == _library_ids(library, prompts).tolist()


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_same_unknown_words(model):
    native, library = tokenizers(model)
    prompts = PROMPTS + _random_prompts(model, 200, seed=7)
    assert native.unknown_words(prompts) == make_unknown_word_finder(library)(prompts)


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_vocabulary_size_and_special_tokens_match(model):
    native, library = tokenizers(model)
    assert len(native) == len(library)
    assert native.model_max_length == library.model_max_length
    assert (native.unk_token, native.unk_token_id, native.pad_id) == (
        library.unk_token,
        library.unk_token_id,
        library.pad_token_id,
    )


def test_ascii_prompts_never_load_the_library_tokenizer():
    folder = BUNDLED["digits"]
    parts = load_native(folder / "unet", folder / "text_encoder", folder / "tokenizer", torch.float32)
    parts.tokenizer.encode(PROMPTS[:-5], MAX_LEN)
    parts.tokenizer.unknown_words(PROMPTS[:-5])
    assert parts.tokenizer._library is None
