"""Classification policies, chosen by name through :func:`make_policy`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..noise import NoiseBank
from ..timesteps import RandomTimesteps, StratifiedTimesteps
from .base import Failure, Outcome, Policy
from .halving import HalvingPolicy, check_halving, halving_evaluations
from .stages import StagedPolicy, exhaustive, stage_evaluations, stage_plan
from .ttest import TTestPolicy, paired_t_pvalues

POLICIES = ("exhaustive", "adaptive", "ttest", "halving")
# The options each policy reads; the others are carried in a PolicyConfig but change nothing.
POLICY_OPTIONS = {
    "exhaustive": ("n_grid",),
    "adaptive": ("n_samples", "to_keep"),
    "ttest": ("min_scores", "max_scores", "cutoff_pval", "sides", "t_order"),
    "halving": ("rounds", "keep", "t_band"),
}
TIMESTEP_ORDERS = ("random", "stratified")


@dataclass
class PolicyConfig:
    """Every policy option, with the papers' defaults. Unused options are ignored by other policies."""

    name: str = "ttest"
    # exhaustive
    n_grid: int = 50
    # adaptive (Li et al.; CIFAR-10 settings)
    n_samples: list[int] = field(default_factory=lambda: [50, 500])
    to_keep: list[int] = field(default_factory=lambda: [5, 1])
    # ttest (Clark & Jaini)
    min_scores: int = 20
    max_scores: int = 2000
    cutoff_pval: float = 2e-3
    sides: int = 2
    t_order: str = "stratified"
    # halving (successive halving on shared samples in a timestep band)
    rounds: list[int] = field(default_factory=lambda: [2, 4, 12])
    keep: list[int] = field(default_factory=lambda: [10, 3, 1])
    t_band: list[float] = field(default_factory=lambda: [0.15, 0.6])

    def validate(self, T: int | None, n_classes: int = 2) -> None:
        """ValueError naming the option for anything wrong. ``T=None`` (no model loaded yet) checks
        everything but the bounds that need the model's timestep count."""
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        self._check_types()
        if T is None:
            T = max(self.n_grid, *self.n_samples)
        if self.t_order not in TIMESTEP_ORDERS:
            raise ValueError(f"unknown timestep order {self.t_order!r}; choose one of {', '.join(TIMESTEP_ORDERS)}")
        if self.name == "exhaustive":
            stage_plan(T, [self.n_grid], [1], n_classes)
        elif self.name == "adaptive":
            stage_plan(T, self.n_samples, self.to_keep, n_classes)
        elif self.name == "halving":
            check_halving(self.rounds, self.keep, self.t_band)
        else:
            TTestPolicy(2, lambda i: 0, self.min_scores, self.max_scores, self.cutoff_pval, self.sides)

    def _check_types(self) -> None:
        # The Python API takes keywords as given: 2.5 or True where an integer belongs must be refused
        # here, not fail deep inside a policy (or, for True, silently mean 1).
        def integer(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def real(v) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

        for f in ("n_grid", "min_scores", "max_scores", "sides"):
            v = getattr(self, f)
            if not integer(v):
                raise ValueError(f"{f} must be an integer, got {v!r}")
        for f in ("n_samples", "to_keep", "rounds", "keep"):
            v = getattr(self, f)
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or not all(integer(x) for x in v):
                raise ValueError(f"{f} must be a list of integers, got {v!r}")
        if not real(self.cutoff_pval):
            raise ValueError(f"cutoff_pval must be a number, got {self.cutoff_pval!r}")
        if isinstance(self.t_band, (str, bytes)) or not hasattr(self.t_band, "__len__") or not all(real(x) for x in self.t_band):
            raise ValueError(f"t_band must be two numbers, got {self.t_band!r}")
        # Plain Python lists from here on: a numpy array or a tuple is as good an input, but `not arr`
        # and `==` mean other things for arrays, and settings (eval --out) are JSON.
        for f in ("n_samples", "to_keep", "rounds", "keep"):
            setattr(self, f, [int(x) for x in getattr(self, f)])
        self.t_band = [float(x) for x in self.t_band]
        for f in ("n_grid", "min_scores", "max_scores", "sides"):
            setattr(self, f, int(getattr(self, f)))
        self.cutoff_pval = float(self.cutoff_pval)

    def max_samples(self, T: int) -> tuple[int, str]:
        """The most samples (noise rows) an image may use under this policy, and the option that sets it."""
        if self.name == "exhaustive":
            return self.n_grid, "--n-grid"
        if self.name == "adaptive":
            return sum(len(idx) for idx, _ in stage_plan(T, self.n_samples, self.to_keep, 2)), "--n-samples"
        if self.name == "halving":
            return int(self.rounds[-1]), "--rounds"
        return self.max_scores, "--max-scores"

    def describe(self) -> str:
        if self.name == "exhaustive":
            return f"exhaustive(grid={self.n_grid})"
        if self.name == "adaptive":
            return f"adaptive(n_samples={self.n_samples}, to_keep={self.to_keep})"
        if self.name == "halving":
            return f"halving(rounds={self.rounds}, keep={self.keep}, t_band={self.t_band})"
        return f"ttest(min={self.min_scores}, max={self.max_scores}, p<{self.cutoff_pval:g}, {self.sides}-sided, t={self.t_order})"


def used_options(policy: dict) -> dict:
    """A policy dict (``asdict(PolicyConfig)``, as an ``eval --out`` row records it) cut down to its
    name and the options that policy reads. An unknown name keeps every option."""
    keep = POLICY_OPTIONS.get(policy.get("name"))
    return dict(policy) if keep is None else {k: v for k, v in policy.items() if k == "name" or k in keep}


def make_policy(cfg: PolicyConfig, n_classes: int, T: int, bank: NoiseBank, key: int, cost: np.ndarray | None = None) -> Policy:
    if cfg.name == "exhaustive":
        return exhaustive(n_classes, T, cfg.n_grid, cost)
    if cfg.name == "adaptive":
        return StagedPolicy(n_classes, T, cfg.n_samples, cfg.to_keep, cost)
    if cfg.name == "halving":
        return HalvingPolicy(n_classes, T, bank, key, cfg.rounds, cfg.keep, cfg.t_band, cost)
    if cfg.name == "ttest":
        order = RandomTimesteps if cfg.t_order == "random" else StratifiedTimesteps
        return TTestPolicy(n_classes, order(T, bank, key), cfg.min_scores, cfg.max_scores, cfg.cutoff_pval, cfg.sides, cost)
    raise ValueError(f"unknown policy {cfg.name!r}; choose one of {', '.join(POLICIES)}")


__all__ = [
    "POLICIES",
    "POLICY_OPTIONS",
    "Failure",
    "HalvingPolicy",
    "Outcome",
    "Policy",
    "PolicyConfig",
    "StagedPolicy",
    "TTestPolicy",
    "check_halving",
    "halving_evaluations",
    "make_policy",
    "paired_t_pvalues",
    "stage_evaluations",
    "stage_plan",
    "used_options",
]
