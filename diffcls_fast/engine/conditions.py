"""From a request's classes to checked condition rows: the class list, its embeddings, and the refusals.

A request names its classes as names, a comma-separated string, a :class:`ClassSpec`
(prompts and prompt ensembles) or None (the model's own list). The engine resolves
them with :func:`class_spec`, encodes them with :func:`encode_conditions` (through the
embedding cache for text models) and refuses, with one line, what could never be told
apart (:func:`check_distinct`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from .cache import EmbeddingCache
from .prompts import ClassSpec, parse_class_list

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle

Classes = ClassSpec | Sequence[str] | str | None
Notice = tuple[str, set[int]]  # a warning sentence about the prompts, and the classes it concerns


def class_spec(model: ModelBundle, classes: Classes, max_batch: int | None = None) -> ClassSpec:
    """The request's classes as a checked :class:`ClassSpec` (the model's prompt template applied to names).

    With ``max_batch``, a class with more prompts than the largest batch is refused.
    """
    spec = _resolve(model, classes)
    return spec if max_batch is None else spec.check_fits(max_batch)


def _resolve(model: ModelBundle, classes: Classes) -> ClassSpec:
    if classes is None:
        if not model.class_names:
            raise UserError(f"model {model.name} ships no class list; pass classes")
        if model.default_prompts:
            return ClassSpec.from_prompts(model.class_names, model.default_prompts)
        return ClassSpec.from_names(model.class_names, model.prompt_template)
    if isinstance(classes, ClassSpec):
        return classes.validate()
    if isinstance(classes, str):
        return parse_class_list(classes, model.prompt_template)
    return ClassSpec.from_names(_class_names(classes), model.prompt_template)


def _class_names(classes: object) -> list[str]:
    """A sequence of class names, checked: every name is a string (an int is refused, not guessed at)."""
    if not isinstance(classes, Iterable):
        raise UserError(
            f"classes: expected a list of names, a comma-separated string or a ClassSpec, got {type(classes).__name__}"
        )
    names = list(classes)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise UserError(
                f"classes[{i}] is {name!r} ({type(name).__name__}); class names must be strings, "
                "e.g. [str(c) for c in classes]"
            )
    return names


def encode_conditions(model: ModelBundle, spec: ClassSpec, cache: EmbeddingCache | None) -> torch.Tensor:
    """The condition table (one row per prompt); refuses non-finite rows.

    The cache re-encodes an entry that holds NaN/inf itself (see :mod:`.cache`), so a
    non-finite row here comes from the encoder: its weights are broken.
    """
    if cache is not None:  # text models only (class ids need no cache)
        cond = cache.get(spec.prompts, model.encode_prompts).to(model.device, model.dtype)
    else:
        cond = model.encode_prompts(spec.prompts)
    bad = _non_finite_rows(cond)
    if bad:
        raise UserError(
            "the model's condition encoder returns non-finite values (NaN/inf) for "
            f"{quote_some([spec.prompts[i] for i in bad])}; its weights are broken"
        )
    return cond


def prompt_notices(model: ModelBundle, spec: ClassSpec) -> list[Notice]:
    """What the text encoder will not see as written: prompts cut at its token limit, and words its tokenizer
    does not know. One sentence each, with the classes concerned; empty when there is nothing to say."""
    if model.cond_kind != "text":
        return []
    return [n for n in (_long_prompts(model, spec), _unknown_words(model, spec)) if n is not None]


def _classes_of(spec: ClassSpec, prompts: set[int]) -> list[int]:
    return [c for c, ids in enumerate(spec.class_prompts) if prompts & {int(i) for i in ids}]


def _long_prompts(model: ModelBundle, spec: ClassSpec) -> Notice | None:
    finder = getattr(model, "long_prompts", None)
    # [(prompt index, token count)], or with several encoders [(index, count, ((encoder, limit, count), ...))]
    found = finder(spec.prompts) if finder is not None else []
    if not found:
        return None
    # a packed condition (SDXL, SD3, Flux, PixArt) has rows after the tokens: the model says its token limit
    limit = int(getattr(model, "prompt_tokens", 0) or model.cond_shape[0])
    sentences = []
    by_cut: dict[tuple, list[tuple[int, int]]] = {}
    for item in found:
        key = tuple((name, lim) for name, lim, _ in item[2]) if len(item) > 2 else ()  # which encoders cut it
        by_cut.setdefault(key, []).append((item[0], item[1]))
    for cut, items in by_cut.items():
        shown = ", ".join(f"{spec.prompts[i]!r} ({n} tokens)" for i, n in items[:3])
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        one = len(items) == 1
        head = f"{'prompt' if one else 'prompts'} {shown}{more} {'is' if one else 'are'} longer than"
        if not cut:
            sentences.append(
                f"{head} the {model.name} text encoder's {limit} tokens, which sees only the first {limit}"
            )
            continue
        names = {name for name, _ in cut}
        kinds = _first_per_name(cut)
        if len(kinds) == 1:
            name, lim = kinds[0]
            sentence = f"{head} the {model.name} {name} text encoder's {lim} tokens: it sees only the first {lim}"
        else:
            what = " and ".join(f"{name} ({lim} tokens)" for name, lim in kinds)
            sentence = f"{head} the {model.name} {what} text encoders take, which see only the start"
        whole = [(n, lim) for n, lim in getattr(finder, "encoders", ()) if n not in names]
        if whole:
            readers = " and ".join(f"{n} encoder ({lim} tokens)" for n, lim in whole)
            sentence += f"; its {readers} reads {'it' if one else 'them'} whole"
        sentences.append(sentence)
    classes = set(_classes_of(spec, {item[0] for item in found}))
    return "; ".join(sentences), classes


def _first_per_name(cut: tuple) -> list[tuple[str, int]]:
    seen, out = set(), []
    for name, lim in cut:
        if name not in seen:
            seen.add(name)
            out.append((name, lim))
    return out


def _unknown_words(model: ModelBundle, spec: ClassSpec) -> Notice | None:
    finder = getattr(model, "unknown_words", None)
    found = finder(spec.prompts) if finder is not None else []  # [(prompt index, word)]
    if not found:
        return None
    words = list(dict.fromkeys(w for _, w in found))
    classes = _classes_of(spec, {i for i, _ in found})
    unk = getattr(model, "unk_token", None) or "the unknown token"
    them = "it" if len(words) == 1 else "them"
    names = quote_some([spec.names[c] for c in classes], "class", "classes")
    return f"the {model.name} tokenizer does not know {quote_some(words)} ({names}) and encodes {them} as {unk}", set(
        classes
    )


def check_distinct(spec: ClassSpec, cond: torch.Tensor, notices: Sequence[Notice] = ()) -> None:
    """Refuse classes whose conditions are identical (the same set of embedding rows): no image can
    tell them apart, and the t-test could never drop one for the other (each would run to max_scores).
    The reason given is the first of ``notices`` (cut prompts, unknown words) that concerns such classes."""
    row_id: dict[bytes, int] = {}
    prompt_group = []
    for chunk in cond.detach().reshape(len(cond), -1).split(64):  # bounded host memory for large tables
        chunk = chunk.to("cpu")
        data = (chunk.float() if chunk.dtype.is_floating_point else chunk).contiguous().numpy()
        prompt_group += [row_id.setdefault(r.tobytes(), len(row_id)) for r in data]
    by_key: dict[tuple[int, ...], list[int]] = {}
    for c, ids in enumerate(spec.class_prompts):
        by_key.setdefault(tuple(sorted({prompt_group[int(i)] for i in ids})), []).append(c)
    same = [cs for cs in by_key.values() if len(cs) > 1]
    if same:
        groups = "; ".join(quote_some([spec.names[c] for c in cs], "", "", limit=6) for cs in same[:5])
        more = f" (and {len(same) - 5} more groups)" if len(same) > 5 else ""
        why = next(
            (sentence for sentence, classes in notices if any(set(cs) & classes for cs in same)),
            "their prompts encode to the same tokens (a tokenizer may ignore case, spacing and punctuation)",
        )
        raise UserError(
            f"classes with identical prompt embeddings cannot be told apart: {groups}{more}; {why}. "
            "Rename them, or drop all but one of each group"
        )


def _non_finite_rows(t: torch.Tensor) -> list[int]:
    if not t.dtype.is_floating_point:
        return []
    return torch.nonzero(~torch.isfinite(t.detach().reshape(len(t), -1)).all(dim=1)).flatten().tolist()


def quote_some(items: Sequence[str], one: str = "", many: str = "", limit: int = 8) -> str:
    """'a', 'b' and 3 more (with an optional noun: "class 'a'", "classes 'a', 'b'")."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    shown = ", ".join(repr(x) for x in items[:limit]) + more
    noun = one if len(items) == 1 else many
    return f"{noun} {shown}" if noun else shown
