"""Pinned behaviour: the engine's answers on fixed inputs, compared with a golden file.

A guard for refactors of the engine (classifier, core, match, policies): every
case below runs the bundled models on fixed held-out images and must give what
``tests/pinned_behaviour.json`` holds: labels, names, evaluation counts (needed
and spent), per-class score counts and the policy's description exactly; mean
errors within rtol 1e-6 and probabilities within rtol 1e-6, atol 1e-9 (NaN and
inf compare equal to themselves). On the machine that made the file the numbers
repeat bit for bit (the tests run at one torch thread, as the generator does);
the tolerances leave room for another CPU's BLAS kernels and thread count, which
move a mean error by a few parts in 1e9 (measured: 1 vs 2 threads).

A change of behaviour that is meant (a new default, a fixed bug) regenerates
the file, from the repository root::

    python -m tests.test_pinned_behaviour --regen

and the diff of the JSON file is the review of what changed. Everything that
names the per-request options API (``with_options`` views, ``Engine.submit``)
sits in the "Per-request options adapter" section, so that a refactor of that
API is followed here in one place.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diffcls_fast import ClassSpec, DiffclsWarning, DiffusionClassifier, load_model
from diffcls_fast.data import digits, numbers

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).with_name("pinned_behaviour.json")

# Tolerances of the float arrays (keys of a result dict); every other value compares exactly.
FLOAT_TOLERANCES = {"mean_errors": (1e-6, 0.0), "errors": (1e-6, 0.0), "probabilities": (1e-6, 1e-9)}
# An engine run shares denoiser batches between requests: within the batch-composition
# tolerance of a separate run (README, Determinism), and its speculation spends differently.
ENGINE_TOLERANCES = {"mean_errors": (1e-5, 1e-7), "probabilities": (1e-4, 1e-6)}

# Positions in the digits held-out split: an easy 1, a 2 on which speculation spends more than the
# rule needs, a 4 that halving calls 0, a 9 that every policy calls 3.
DIGIT_IMAGES = (0, 1, 28, 371)
# A 9 on which the t-test runs past 5,000 evaluations by default: a small max_scores stops it.
HARD_DIGIT = 24
# Positions in the numbers held-out split (round-robin over classes: 'zero zero', 'zero one', 'one two').
NUMBER_IMAGES = (0, 1, 12)
ADAPTIVE_OPTIONS = {"n_samples": [5, 20], "to_keep": [3, 1]}
EXHAUSTIVE_OPTIONS = {"n_grid": 10}
SUBSET = ["one", "two", "four", "nine"]
MATCH_CAPTIONS = ["the digits one two", "the digits two one"]  # the README's example, in numbers' vocabulary
MATCH_GRID = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The golden file is made at one intra-op thread (regenerate), so on the machine that made it the
    # comparisons hold bit for bit; and on a shared 2-core CPU this small model runs several times
    # faster on one thread than on two. The results move by a few parts in 1e9 at most with it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- inputs (loaded once per process) --------------------------------------------------------
@cache
def _model(name: str):
    # The CPU whatever the machine: the golden numbers are the CPU's.
    return load_model(name, device="cpu")


@cache
def _digit_images() -> tuple:
    pil, _, _ = digits.load_split("heldout")
    return tuple(pil[i] for i in DIGIT_IMAGES)


@cache
def _hard_digits() -> tuple:
    pil, _, _ = digits.load_split("heldout")
    return (pil[HARD_DIGIT], pil[DIGIT_IMAGES[0]])


@cache
def _number_images() -> tuple:
    pil, _, _ = numbers.load_split("heldout")
    return tuple(pil[i] for i in NUMBER_IMAGES)


@cache
def _swap_groups() -> tuple:
    """Two Winoground groups of the numbers swap set: the first for digits (1, 2), the first for (2, 6)."""
    groups = numbers.load_swap_groups()
    pick = [next(g for g in groups if g["labels"] == labels) for labels in [(1, 2), (2, 6)]]
    return tuple((tuple(g["images"]), tuple(g["captions"])) for g in pick)


def _ensemble() -> ClassSpec:
    """Four digits, two or three prompts each (digits' training templates); 'nine' shares no prompt."""
    names = ["one", "two", "four", "nine"]
    prompts, class_prompts = [], []
    for name in names:
        d = digits.CLASS_NAMES.index(name)
        own = [digits.TEMPLATES[k].format(name=name, digit=d) for k in ((0, 1, 4) if name != "nine" else (0, 3))]
        class_prompts.append(np.arange(len(prompts), len(prompts) + len(own)))
        prompts += own
    return ClassSpec(names, prompts, class_prompts)


def _classifier(model: str, policy: str, **kw: Any) -> DiffusionClassifier:
    # No embedding cache: a case must not depend on what an earlier run left on disk.
    return DiffusionClassifier(_model(model), policy, use_cache=False, **kw)


# -- Per-request options adapter ----------------------------------------------------------
# The only code that names the per-request options API (``with_options`` views, whose
# ``.options`` an engine admits a request with).
def classify_with_options(clf: DiffusionClassifier, images, classes=None, **options: Any) -> list:
    """``clf.classify`` with per-request ``options`` (policy and its options, seed, temperature, posterior_floor)."""
    return clf.with_options(**options).classify(list(images), classes)


def run_engine_requests(clf: DiffusionClassifier, requests: list[tuple[list, Any, dict]]) -> tuple[list[list], int]:
    """Drive one engine with every request submitted up front; each request is ``(images, classes, options)``.

    Returns each request's results in input order, and the most images that were in
    flight at once (more than the first request's images: the requests shared batches).
    """
    engine = clf.engine()
    # chunk=1: requests interleave at image granularity, as a server's do
    handles = []
    for ims, classes, opts in requests:
        handles.append(engine.submit(list(ims), classes, options=clf.with_options(**opts).options, chunk=1))
    results = [[None] * len(ims) for ims, _, _ in requests]
    peak = 0
    while engine.has_work:
        events = engine.step()
        peak = max(peak, engine.inflight_images)
        for handle, index, result in events:
            results[handles.index(handle)][index] = result
    return results, peak


# -- encoding results as JSON (floats exactly; NaN and inf as strings) -------------------------
def _num(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _floats(a) -> list:
    return [_num(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def _result(r) -> dict:
    return {
        "label": int(r.label),
        "label_name": r.label_name,
        "class_names": list(r.class_names),
        "top": [name for name, _ in r.top(len(r.class_names))],
        "evaluations": int(r.evaluations),
        "evaluations_spent": int(r.evaluations_spent),
        "n_scores": [int(n) for n in r.n_scores],
        "mean_errors": _floats(r.mean_errors),
        "probabilities": _floats(r.probabilities),
        "policy": r.policy,
        "error": r.error,
    }


def _match(m) -> dict:
    d = {
        "captions": list(m.captions),
        "errors": [_floats(row) for row in m.errors],
        "n_grid": int(m.n_grid),
        "evaluations": int(m.evaluations),
        "shared_noise": bool(m.shared_noise),
        "policy": m.policy,
        "failures": list(m.failures),
        "best_caption": [int(i) for i in m.best_caption()],
        "best_image": [int(i) for i in m.best_image()],
    }
    if m.errors.shape == (2, 2):
        d["winoground"] = m.winoground().to_dict()
    return d


# -- the cases --------------------------------------------------------------------------------
CASES: dict[str, Callable[[], Any]] = {}


def case(name: str):
    def register(fn: Callable[[], Any]) -> Callable[[], Any]:
        CASES[name] = fn
        return fn

    return register


def _policy_case(policy: str, **options: Any) -> Callable[[], list]:
    return lambda: [_result(r) for r in _classifier("digits", policy, **options).classify(list(_digit_images()))]


case("digits/policy/ttest")(_policy_case("ttest"))
case("digits/policy/halving")(_policy_case("halving"))
case("digits/policy/adaptive")(_policy_case("adaptive", **ADAPTIVE_OPTIONS))
case("digits/policy/exhaustive")(_policy_case("exhaustive", **EXHAUSTIVE_OPTIONS))
# The policy cases use l2. The runner computes the loss whatever the policy, so halving (cheap)
# covers each; x0 also runs the t-test: its posterior falls back to the uncalibrated default (the
# shipped calibration is l2's) and its errors, weighted by timestep, move the t-test's decisions.
for _loss in ("l1", "huber", "x0"):
    case(f"digits/loss/{_loss}/halving")(_policy_case("halving", loss=_loss))
case("digits/loss/x0/ttest")(_policy_case("ttest", loss="x0"))


@case("digits/constructor/temperature-floor")
def _constructor_temperature():
    clf = _classifier("digits", "halving", temperature=0.05, posterior_floor=0.02, seed=7)
    return [_result(r) for r in clf.classify(list(_digit_images()))]


@case("digits/classes/subset-ttest")
def _subset():
    return [_result(r) for r in _classifier("digits", "ttest").classify(list(_digit_images()), SUBSET)]


@case("digits/classes/string-halving")
def _class_string():
    # a comma-separated string, spaces and a trailing comma tolerated; the model's template makes the prompts
    res = _classifier("digits", "halving").classify(list(_digit_images()), " nine, four ,one,")
    return [_result(r) for r in res]


@case("digits/edge/one-class-and-nan-input")
def _edge_cases():
    # a lone class is answered without the model (NaN mean); a NaN input fails its image, not the call
    nan_image = torch.full((1, 8, 8), float("nan"))
    clf = _classifier("digits", "halving")
    one = clf.classify([_digit_images()[0], nan_image], ["seven"])
    ten = clf.classify([nan_image, _digit_images()[0]])
    return [_result(r) for r in one + ten]


@case("digits/options/seed3-halving")
def _seed3_halving():
    res = classify_with_options(_classifier("digits", "ttest"), _digit_images(), seed=3, policy="halving")
    return [_result(r) for r in res]


@case("digits/options/temperature")
def _temperature_override():
    # an explicit temperature without a floor means floor 0 (halving: the posterior is all that changes)
    res = classify_with_options(_classifier("digits", "halving"), _digit_images(), temperature=0.05)
    return [_result(r) for r in res]


@case("digits/options/temperature-floor-exhaustive")
def _temperature_floor():
    clf = _classifier("digits", "ttest")
    opts = {"policy": "exhaustive", "n_grid": 6, "temperature": 0.02, "posterior_floor": 0.1}
    res = classify_with_options(clf, _digit_images(), **opts)
    return [_result(r) for r in res]


@case("digits/options/ttest-small")
def _ttest_options():
    # the first image reaches max_scores (a near tie), the second is decided early
    clf = _classifier("digits", "halving")
    opts = {"policy": "ttest", "min_scores": 5, "max_scores": 40, "cutoff_pval": 1e-2, "sides": 1, "t_order": "random"}
    return [_result(r) for r in classify_with_options(clf, _hard_digits(), **opts)]


@case("digits/options/halving-schedule")
def _halving_schedule():
    clf = _classifier("digits", "ttest")
    opts = {"policy": "halving", "rounds": [1, 3, 6], "keep": [5, 2, 1], "t_band": [0.0, 1.0]}
    res = classify_with_options(clf, _digit_images(), **opts)
    return [_result(r) for r in res]


@case("digits/ensemble/ttest")
def _ensemble_ttest():
    return [_result(r) for r in _classifier("digits", "ttest").classify(list(_digit_images()), _ensemble())]


@case("digits/ensemble/halving")
def _ensemble_halving():
    return [_result(r) for r in _classifier("digits", "halving").classify(list(_digit_images()), _ensemble())]


@case("numbers/policy/halving")
def _numbers_halving():
    return [_result(r) for r in _classifier("numbers", "halving").classify(list(_number_images()))]


@case("numbers/match/per-image-noise")
def _match_per_image():
    images, _ = _swap_groups()[0]
    return _match(_classifier("numbers", "ttest").match(list(images), MATCH_CAPTIONS, n_grid=MATCH_GRID))


@case("numbers/match/shared-noise")
def _match_shared():
    images, _ = _swap_groups()[0]
    clf = _classifier("numbers", "ttest")
    return _match(clf.match(list(images), MATCH_CAPTIONS, n_grid=MATCH_GRID, shared_noise=True))


@case("numbers/match/three-by-three")
def _match_3x3():
    # no Winoground scores off 2x2; a repeated caption is one class (scored once per sample)
    (a, _), (b, _) = _swap_groups()
    caps = [*MATCH_CAPTIONS, MATCH_CAPTIONS[0], "the digits two six"]
    return _match(_classifier("numbers", "ttest", seed=11).match([a[0], a[1], b[0]], caps, n_grid=4))


@case("numbers/match/groups")
def _match_groups():
    groups = [(list(ims), list(caps)) for ims, caps in _swap_groups()]
    out = list(_classifier("numbers", "ttest").match_groups(groups, n_grid=MATCH_GRID))
    return {"order": [g for g, _ in out], "groups": [_match(m) for _, m in sorted(out, key=lambda e: e[0])]}


# The engine's requests: (images, classes, options), and the case each must equal when run alone.
def _engine_requests() -> list[tuple[list, Any, dict, str]]:
    ims = list(_digit_images())
    return [
        (ims, None, {}, "digits/policy/ttest"),
        (ims, None, {"seed": 3, "policy": "halving"}, "digits/options/seed3-halving"),
        (ims, _ensemble(), {"policy": "halving"}, "digits/ensemble/halving"),
    ]


@case("engine/three-requests")
def _engine_three_requests():
    reqs = _engine_requests()
    results, peak = run_engine_requests(_classifier("digits", "ttest"), [(i, c, o) for i, c, o, _ in reqs])
    return {"results": [[_result(r) for r in rs] for rs in results], "shared_batches": peak > len(reqs[0][0])}


# -- comparison -------------------------------------------------------------------------------
def _decode(v: Any) -> float:
    return float(v)  # "nan", "inf", "-inf" and numbers alike


def assert_pinned(got: Any, want: Any, where: str = "", tolerances: dict = FLOAT_TOLERANCES, skip: tuple = ()) -> None:
    """``got`` equals ``want`` (JSON trees); the float arrays named in ``tolerances`` within them."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: expected an object, got {got!r}"
        assert set(got) - set(skip) == set(want) - set(skip), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            if k in skip:
                continue
            if k in tolerances:
                rtol, atol = tolerances[k]
                g = np.array([[_decode(x) for x in row] if isinstance(row, list) else _decode(row) for row in got[k]])
                w = np.array([[_decode(x) for x in row] if isinstance(row, list) else _decode(row) for row in want[k]])
                assert g.shape == w.shape, f"{where}.{k}: shape {g.shape} != {w.shape}"
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{where}.{k}")
            else:
                assert_pinned(got[k], want[k], f"{where}.{k}", tolerances, skip)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_pinned(g, w, f"{where}[{i}]", tolerances, skip)
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def compute(name: str) -> Any:
    """Run one case; JSON-ready (a round trip through JSON, as the golden file went)."""
    with warnings.catch_warnings():
        # x0's calibration fallback warns; the warning is not what this file pins
        warnings.simplefilter("ignore", DiffclsWarning)
        return json.loads(json.dumps(CASES[name]()))


@lru_cache(maxsize=1)
def _golden() -> dict:
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN.name} is missing; generate it with: python -m tests.test_pinned_behaviour --regen")
    return json.loads(GOLDEN.read_text())


def test_golden_file_names_exactly_the_cases():
    stale = "stale golden file: python -m tests.test_pinned_behaviour --regen"
    assert sorted(_golden()["cases"]) == sorted(CASES), stale


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned(name):
    want = _golden()["cases"].get(name)
    if want is None:
        pytest.fail(f"{name} is not in {GOLDEN.name}; python -m tests.test_pinned_behaviour --regen")
    assert_pinned(compute(name), want, name)


def test_engine_requests_equal_their_separate_runs():
    """Each engine request's results are its separate run's (pinned above): labels, counts and names exactly,
    floats within the batch-composition tolerance; evaluations spent differ (speculation fills shared batches)."""
    cases = _golden()["cases"]
    engine = cases["engine/three-requests"]
    assert engine["shared_batches"], "the requests never shared the engine's batches"
    for k, (_, _, _, alone) in enumerate(_engine_requests()):
        where = f"request {k} vs {alone}"
        assert_pinned(engine["results"][k], cases[alone], where, ENGINE_TOLERANCES, skip=("evaluations_spent",))


# -- regeneration -----------------------------------------------------------------------------
def regenerate(path: Path = GOLDEN) -> None:
    # One intra-op thread: a prompt ensemble's means move in the 9th digit with the thread count,
    # and a regenerated file should differ from the old one only where behaviour did.
    torch.set_num_threads(1)
    out = {
        "about": "pinned engine outputs; regenerate with: python -m tests.test_pinned_behaviour --regen",
        "generated_with": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "cases": {},
    }
    for name in CASES:
        t0, c0 = time.perf_counter(), time.process_time()
        out["cases"][name] = compute(name)
        print(f"{name}: {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)", file=sys.stderr)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="regenerate the pinned-behaviour golden file")
    ap.add_argument("--regen", action="store_true", help=f"recompute every case and write {GOLDEN.name}")
    if not ap.parse_args().regen:
        ap.error("nothing to do; pass --regen")
    regenerate()
