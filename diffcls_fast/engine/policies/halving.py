"""Successive halving over classes on shared, stratified samples in a timestep band.

Round r scores every surviving class on the samples ``rounds[r-1] .. rounds[r] - 1``
(cumulative counts; the first round starts at sample 0) and keeps the
``keep[r]`` classes with the lowest mean error over *all* samples scored so far.
Every survivor is scored on the same prefix of samples, each sample one (t, eps)
pair shared by every class of the image, so the ranking compares paired means.

Timesteps walk a randomly rotated van der Corput sequence (as ``ttest``'s
``stratified`` order) inside ``band = (lo, hi)``, fractions of T: every prefix of
length 2^k has one timestep in each of 2^k equal strata of the band. The band
skips the timesteps that tell classes apart worst (t near 0: the noise is too
small to matter; t near T: the image is gone). On the ``numbers`` train split a
single sample at t in [0.15 T, 0.6 T) ranks the true class first 92.9% of the time,
in the top 5 99.4% and in the top 10 99.8% (``python -m bench.policy_search``, 300
pairs; over the whole grid: 80.6%, 94.9%, 97.2%), so a first round
of two samples per class can prune 100 classes to 10.

Defaults (``rounds 2 4 12``, ``keep 10 3 1``, band 0.15-0.6; chosen on the train
split, where every schedule with a two-sample first round made no error in any
band while one-sample first rounds made a few): 100 x 2 + 10 x 2 + 3 x 8 = 244
evaluations per image for 100 classes, 64 for 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..timesteps import StratifiedTimesteps
from .options import Option, PolicySpec, positive_int
from .stages import StagedPolicy

if TYPE_CHECKING:
    from ..noise import NoiseBank


def check_halving(rounds: Sequence[int], keep: Sequence[int], band: Sequence[float]) -> None:
    if len(rounds) != len(keep) or not rounds:
        raise ValueError("--rounds and --keep need the same, non-zero number of values")
    if any(r < 1 for r in rounds) or any(b <= a for a, b in zip(rounds, rounds[1:])):
        raise ValueError(f"--rounds are cumulative sample counts: positive and increasing, got {list(rounds)}")
    if any(k < 1 for k in keep) or list(keep) != sorted(keep, reverse=True) or keep[-1] != 1:
        raise ValueError(f"--keep must be positive, non-increasing and end with 1, got {list(keep)}")
    if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0:
        raise ValueError(f"--t-band is two fractions of T with 0 <= lo < hi <= 1, got {list(band)}")


def halving_evaluations(n_classes: int, rounds: Sequence[int], keep: Sequence[int]) -> int:
    """Denoiser evaluations per image (one prompt per class): pure arithmetic, for docs and tests."""
    alive, done, total = n_classes, 0, 0
    for r, k in zip(rounds, keep):
        total += alive * (r - done)
        done, alive = r, min(alive, k)
        if alive == 1:
            break
    return total


class HalvingPolicy(StagedPolicy):
    name = "halving"

    def __init__(
        self,
        n_classes: int,
        T: int,
        bank: NoiseBank,
        key: int,
        rounds: Sequence[int] = (2, 4, 12),
        keep: Sequence[int] = (10, 3, 1),
        band: Sequence[float] = (0.15, 0.6),
        cost: np.ndarray | None = None,
    ):
        check_halving(rounds, keep, band)
        plan, start = [], 0
        for r, k in zip(rounds, keep):
            plan.append((np.arange(start, r), min(k, n_classes)))
            start = r
        order = StratifiedTimesteps(T, bank, key, (float(band[0]), float(band[1])))
        self._start(n_classes, cost, plan, np.array([order(i) for i in range(rounds[-1])]))


HALVING = PolicySpec(
    name="halving",
    summary="successive halving on shared samples in a timestep band",
    options=(
        Option(
            "rounds", int, (2, 4, 12), "cumulative samples per class after each round", nargs="+", parse=positive_int
        ),
        Option("keep", int, (10, 3, 1), "classes kept after each round", nargs="+", parse=positive_int),
        Option(
            "t_band", float, (0.15, 0.6), "timesteps drawn in [LO T, HI T)", nargs=2, parse=float, metavar=("LO", "HI")
        ),
    ),
    make=lambda o, n_classes, T, bank, key, cost: HalvingPolicy(
        n_classes, T, bank, key, o["rounds"], o["keep"], o["t_band"], cost
    ),
    check=lambda o, T, n_classes: check_halving(o["rounds"], o["keep"], o["t_band"]),
    max_samples=lambda o, T: int(o["rounds"][-1]),
    describe=lambda o: f"halving(rounds={o['rounds']}, keep={o['keep']}, t_band={o['t_band']})",
    samples_option="rounds",
)
