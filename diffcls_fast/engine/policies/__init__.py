"""Classification policies: each declared once (:class:`PolicySpec`), chosen by name.

A new policy is one module that ends with its :class:`PolicySpec`, plus its line in
:data:`REGISTRY`; the CLI, the server, the settings key and the docs read the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Failure, Outcome, Policy
from .halving import HALVING, HalvingPolicy, check_halving, halving_evaluations
from .options import Option, PolicySpec
from .stages import ADAPTIVE, EXHAUSTIVE, StagedPolicy, exhaustive, stage_evaluations, stage_plan
from .ttest import (
    TTEST,
    TTestPolicy,
    drops_from_sums,
    paired_t_pvalues,
    paired_t_pvalues_from_sums,
    sequential_ttest,
)
from .tuned import TUNED, read_rule

if TYPE_CHECKING:
    from ..noise import NoiseBank

# The order is the order of the CLI's option groups, of the docs' table and of a settings dict's keys.
REGISTRY: dict[str, PolicySpec] = {s.name: s for s in (EXHAUSTIVE, ADAPTIVE, TTEST, HALVING, TUNED)}
POLICIES = tuple(REGISTRY)
# Every option of every policy, by name (names are unique across policies).
OPTIONS: dict[str, Option] = {o.name: o for s in REGISTRY.values() for o in s.options}
OWNER: dict[str, str] = {o.name: s.name for s in REGISTRY.values() for o in s.options}
# The options each policy reads; the others are carried in a PolicyConfig but change nothing.
POLICY_OPTIONS = {name: tuple(o.name for o in s.options) for name, s in REGISTRY.items()}


class PolicyConfig:
    """A policy's name and a value for every option of every policy (defaults where not given).

    Options of other policies are carried and ignored, so that one configuration can switch
    policy (``with_options(policy=...)``) and keep the rest. ``cfg.n_grid`` reads an option.
    It is also the engine's policy factory: :meth:`make` builds one image's policy.
    """

    def __init__(self, name: str = "ttest", **options: Any):
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self.name = name
        self.options = {k: options[k] if k in options else o.default_value() for k, o in OPTIONS.items()}

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyConfig) and (self.name, self.options) == (other.name, other.options)

    def __repr__(self) -> str:
        return f"PolicyConfig({self.name!r}, {', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    @property
    def spec(self) -> PolicySpec:
        spec = REGISTRY.get(self.name)
        if spec is None:
            raise ValueError(f"unknown policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        return spec

    def validate(self, T: int | None, n_classes: int = 2) -> None:
        """ValueError naming the option for anything wrong. ``T=None`` (no model loaded yet) checks
        everything but the bounds that need the model's timestep count. Normalises the values
        (plain ints, floats and lists)."""
        spec = self.spec
        self.options = {k: OPTIONS[k].coerce(v) for k, v in self.options.items()}
        spec.check(self.options, T, n_classes)

    def to_dict(self) -> dict:
        """``{"name": ..., **every option}``, as ``eval --out`` rows record it."""
        opts = {k: v for k, v in self.options.items() if OPTIONS[k].settings}  # the others cannot change a result
        return {"name": self.name, **{k: list(v) if isinstance(v, list) else v for k, v in opts.items()}}

    def max_samples(self, T: int | None) -> tuple[int, str]:
        """The most samples (noise rows) an image may use under this policy, and the flag that sets it."""
        spec = self.spec
        return int(spec.max_samples(self.options, T)), OPTIONS[spec.samples_option].flag

    def describe(self) -> str:
        return self.spec.describe(self.options)

    def make(self, index: int, n_classes: int, T: int, bank: NoiseBank, key: int, cost: np.ndarray | None) -> Policy:
        """Image ``index``'s policy (every image of a request gets the same rule; its own noise ``key``)."""
        return self.spec.make(self.options, n_classes, T, bank, key, cost)


def used_options(policy: dict) -> dict:
    """A policy dict (:meth:`PolicyConfig.to_dict`, as an ``eval --out`` row records it) cut down to its
    name and the options that policy reads and that can change a result. An unknown name keeps every option."""
    spec = REGISTRY.get(policy.get("name"))
    if spec is None:
        return dict(policy)
    keep = {o.name for o in spec.options if o.settings}
    return {k: v for k, v in policy.items() if k == "name" or k in keep}


def make_policy(
    cfg: PolicyConfig, n_classes: int, T: int, bank: NoiseBank, key: int, cost: np.ndarray | None = None
) -> Policy:
    return cfg.make(0, n_classes, T, bank, key, cost)


def options_table() -> list[str]:
    """The docs' table of every policy option (docs/policies.md holds it; a test keeps the two equal)."""
    lines = ["| policy | option | type | default | meaning |", "|---|---|---|---|---|"]
    for spec in REGISTRY.values():
        for o in spec.options:
            flag = " ".join([o.flag, *(o.metavar or ())])
            row = [spec.name, f"`{o.name}` (`{flag}`)", o.kind_text(), o.default_text(), o.help]
            lines.append("| " + " | ".join(row) + " |")
    return lines


__all__ = [
    "OPTIONS",
    "POLICIES",
    "POLICY_OPTIONS",
    "REGISTRY",
    "Failure",
    "HalvingPolicy",
    "Option",
    "Outcome",
    "Policy",
    "PolicyConfig",
    "PolicySpec",
    "StagedPolicy",
    "TTestPolicy",
    "check_halving",
    "drops_from_sums",
    "exhaustive",
    "halving_evaluations",
    "make_policy",
    "options_table",
    "paired_t_pvalues",
    "paired_t_pvalues_from_sums",
    "read_rule",
    "sequential_ttest",
    "stage_evaluations",
    "stage_plan",
    "used_options",
]
