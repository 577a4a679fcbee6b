"""How a policy declares itself: its options (name, type, default, check, help) and its hooks.

Each policy module ends with one :class:`PolicySpec`; :mod:`.registry` lists them.
The CLI flags, the server's ``options`` fields, the Ray adapter, ``eval``'s settings
key and the docs' option table are all derived from these declarations, so a new
policy touches its own file and the registry.

Importing this module (and the policy modules) pulls in numpy only: ``diffcls-fast
--help`` builds its flags from the declarations without importing torch or scipy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


# -- argparse types: one value as typed on the command line -------------------------------------
def _typed(text: str, convert: Callable[[str], Any], expected: str, ok: Callable[[Any], bool], must: str) -> Any:
    """``convert(text)``, or an argparse error saying what was expected or which bound it broke."""
    try:
        v = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {must}, got {v if convert is int else text}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _typed(text, int, "a positive integer", lambda v: v >= 1, ">= 1")


def positive_float(text: str) -> float:
    """A finite float > 0."""
    return _typed(text, float, "a positive number", lambda v: 0 < v < float("inf"), "a finite number > 0")


def probability(text: str) -> float:
    """A p-value cutoff in (0, 1)."""
    return _typed(text, float, "a number in (0, 1)", lambda v: 0 < v < 1, "in (0, 1)")


def _integer(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _sequence(v: Any) -> bool:
    return not isinstance(v, (str, bytes)) and hasattr(v, "__len__")


@dataclass(frozen=True)
class Option:
    """One policy option, declared once.

    ``type`` is the type of one value (int, float or str); ``nargs`` is None for a
    single value, ``"+"`` for a list, or a count. ``parse`` reads one value from the
    command line (an argparse type); ``choices`` restricts a value; ``settings`` says
    whether the option enters ``eval``'s settings key (whether it can change a result).
    """

    name: str
    type: type
    default: Any
    help: str
    nargs: int | str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple | None = None
    metavar: tuple[str, ...] | None = None
    what: str = ""  # what a value is, for the unknown-choice error ("timestep order")
    settings: bool = True
    default_doc: str = ""  # the default in words, where the value itself says nothing ("" for "the model's own")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return self.nargs is not None

    def default_value(self) -> Any:
        """A fresh copy of the default (lists are mutable)."""
        return list(self.default) if self.is_list else self.default

    def default_text(self) -> str:
        if self.default_doc:
            return self.default_doc
        return " ".join(_fmt(x) for x in self.default) if self.is_list else _fmt(self.default)

    def kind_text(self) -> str:
        """What a value is, in words (the docs' table)."""
        if self.choices is not None:
            shown = [f"`{c}`" if isinstance(c, str) else str(c) for c in self.choices]
            return ("integer, " if self.type is int else "") + " or ".join(shown)
        one = {positive_int: "positive integer", probability: "probability in (0, 1)"}.get(self.parse)
        one = one or {int: "integer", float: "number", str: "file path"}[self.type]
        if self.nargs == "+":
            return f"list of {one}s"
        return f"{_count(self.nargs)} {one}s" if self.nargs else one

    def coerce(self, v: Any) -> Any:
        """``v`` as plain Python values of the declared type, or a ValueError naming the option.

        The Python API takes keywords as given: 2.5 or True where an integer belongs is refused
        here, not deep inside a policy (or, for True, silently taken as 1). A numpy array or a
        tuple is as good a list, but settings are JSON, so lists come out as lists.
        """
        if self.is_list:
            if self.type is int:
                if not _sequence(v) or not all(_integer(x) for x in v):
                    raise ValueError(f"{self.name} must be a list of integers, got {v!r}")
                return [int(x) for x in v]
            if not _sequence(v) or not all(_real(x) for x in v):
                raise ValueError(f"{self.name} must be {_count(self.nargs)} numbers, got {v!r}")
            return [float(x) for x in v]
        if self.type is int:
            if not _integer(v):
                raise ValueError(f"{self.name} must be an integer, got {v!r}")
            return int(v)
        if self.type is float:
            if not _real(v):
                raise ValueError(f"{self.name} must be a number, got {v!r}")
            return float(v)
        if self.type is str and not isinstance(v, str):
            raise ValueError(f"{self.name} must be a string, got {v!r}")
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"unknown {self.what or self.name} {v!r}; choose one of {', '.join(self.choices)}")
        return v


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _count(nargs: int | str | None) -> str:
    return {2: "two", "+": "a list of"}.get(nargs, str(nargs))


Options = Mapping[str, Any]  # option name -> value, coerced


@dataclass(frozen=True)
class PolicySpec:
    """A policy, declared once: its name, options and hooks.

    ``make(opts, n_classes, T, bank, key, cost)`` builds an image's policy; ``check(opts, T,
    n_classes)`` raises a ValueError for options it cannot run (``T=None``: no model loaded
    yet, so the bounds that need the model's timestep count are skipped);
    ``max_samples(opts, T)`` is the most samples (noise rows) an image may use;
    ``describe(opts)`` names the policy and options in results and logs.
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    make: Callable[..., Any]
    check: Callable[[Options, int | None, int], None]
    max_samples: Callable[[Options, int | None], int]
    describe: Callable[[Options], str]
    samples_option: str  # the option that bounds max_samples (named when a saved noise tensor is too short)
