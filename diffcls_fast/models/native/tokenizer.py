"""A word-level tokenizer (the bundled models' kind) without the ``tokenizers`` / transformers stack.

It reproduces, for the ``tokenizer.json`` layout that :func:`..support.tokenizer_refusal` accepts, what
transformers' fast tokenizer does when the prompt encoder calls it with ``padding="max_length",
truncation=True``:

1. split out the added (special) tokens, matched on the raw text, leftmost then longest;
2. lowercase the rest (the ``Lowercase`` normalizer);
3. split it into runs of word characters and runs of other non-space characters (the ``Whitespace``
   pre-tokenizer, regex ``\\w+|[^\\w\\s]+``);
4. look each piece up in the vocabulary, the unknown token where it is missing;
5. truncate to leave room for the template's special tokens, wrap, pad on the right.

Only ASCII text is handled here: beyond ASCII, which characters count as word characters or spaces
(Unicode classes in the Rust regex engine, another set in Python's ``re``) and how they lowercase is
the library's to say, so a prompt with any non-ASCII character goes to the library tokenizer instead
(see :class:`LibraryFallback`), and the two never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# ASCII only (see the module docstring): the word characters of \w, and the characters of \s (Unicode
# White_Space, which leaves out the separators \x1c-\x1f that Python's str.isspace() counts).
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_SPACE = frozenset("\t\n\x0b\x0c\r ")


class WordLevelTokenizer:
    def __init__(
        self,
        vocab: dict[str, int],
        unk_token: str,
        added: dict[str, int],
        prefix: list[int],
        suffix: list[int],
        pad_id: int,
        model_max_length: int,
        fallback: Callable[[], object],
    ):
        self.vocab = vocab
        self.unk_token = unk_token
        self.unk_token_id = vocab[unk_token]
        self.added = added  # content -> id, matched before normalization
        self.prefix, self.suffix = prefix, suffix  # the template's special tokens around the sequence
        self.pad_id = pad_id
        self.model_max_length = model_max_length
        self._fallback = fallback  # () -> the library tokenizer, loaded only when a prompt needs it
        self._library = None
        self._longest_added = max((len(a) for a in added), default=0)

    def __len__(self) -> int:
        return len(set(self.vocab.values()) | set(self.added.values()))

    def pieces(self, text: str) -> list[tuple[int, int, int]]:
        """(token id, start, end) of each token of ``text`` (no special tokens added); ASCII text only."""
        out: list[tuple[int, int, int]] = []
        i = start = 0
        n = len(text)
        while i < n:
            hit = self._added_at(text, i)
            if hit is None:
                i += 1
                continue
            out += self._words(text, start, i)
            out.append((self.added[hit], i, i + len(hit)))
            i = start = i + len(hit)
        return out + self._words(text, start, n)

    def _added_at(self, text: str, i: int) -> str | None:
        """The longest added token that starts at ``text[i]``, or None."""
        for k in range(min(self._longest_added, len(text) - i), 0, -1):
            if text[i : i + k] in self.added:
                return text[i : i + k]
        return None

    def _words(self, text: str, a: int, b: int) -> list[tuple[int, int, int]]:
        out = []
        i = a
        while i < b:
            ch = text[i]
            if ch in _SPACE:
                i += 1
                continue
            word = ch in _WORD
            j = i + 1
            while j < b and text[j] not in _SPACE and (text[j] in _WORD) == word:
                j += 1
            out.append((self.vocab.get(text[i:j].lower(), self.unk_token_id), i, j))
            i = j
        return out

    def _library_tokenizer(self):
        if self._library is None:
            self._library = self._fallback()
        return self._library

    def encode(self, prompts: Sequence[str], max_length: int) -> torch.Tensor:
        """``[len(prompts), max_length]`` int64 ids: truncated, wrapped in the template's special tokens, padded."""
        rows = []
        room = max_length - len(self.prefix) - len(self.suffix)
        for p in prompts:
            if not p.isascii():
                tok = self._library_tokenizer()
                enc = tok([p], padding="max_length", max_length=max_length, truncation=True)
                rows.append(list(enc["input_ids"][0]))
                continue
            ids = [t for t, _, _ in self.pieces(p)][: max(room, 0)]
            row = (self.prefix + ids + self.suffix)[:max_length]
            rows.append(row + [self.pad_id] * (max_length - len(row)))
        return torch.tensor(rows, dtype=torch.int64)

    def long_prompts(self, prompts: Sequence[str], max_length: int) -> list[tuple[int, int]]:
        """The (prompt index, token count, special tokens included) of the prompts longer than ``max_length``."""
        out = []
        for i, p in enumerate(prompts):
            if not p.isascii():
                from ..text_to_image import make_long_prompt_finder

                out += [(i, n) for _, n in make_long_prompt_finder(self._library_tokenizer(), max_length)([p])]
                continue
            n = len(self.prefix) + len(self.pieces(p)) + len(self.suffix)
            if n > max_length:
                out.append((i, n))
        return out

    def unknown_words(self, prompts: Sequence[str]) -> list[tuple[int, str]]:
        """The (prompt index, word) pairs that encode as the unknown token, the literal unknown token aside."""
        out = []
        for i, p in enumerate(prompts):
            if not p.isascii():
                out += [(i, w) for _, w in _library_unknown_words(self._library_tokenizer(), [p])]
                continue
            for tid, a, b in self.pieces(p):
                if tid == self.unk_token_id and p[a:b] != self.unk_token:
                    out.append((i, p[a:b]))
        return out


def _library_unknown_words(tokenizer, prompts: Sequence[str]) -> list[tuple[int, str]]:
    from ..text_to_image import make_unknown_word_finder

    finder = make_unknown_word_finder(tokenizer)
    return finder(prompts) if finder is not None else []
