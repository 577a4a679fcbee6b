"""bench.flow_check's bookkeeping, without a denoiser: summaries of saved runs, a shorter --limit, agreement."""

import argparse

import numpy as np

from bench.flow_check import _payload, policy_args


def _args(**kw):
    return argparse.Namespace(**({"policy": "halving", "n_grid": 10} | kw))


def test_a_shorter_limit_reports_the_first_pairs_of_longer_runs():
    labels = np.array([0, 1, 2, 3])
    runs = {
        "numbers": {"picks": [0, 1, 2, 3, 9, 9], "evals": [10.0] * 4 + [99.0] * 2, "policy": "p"},
        "numbers-flow": {"picks": [0, 9, 2, 3, 0, 0], "evals": [20.0] * 6, "policy": "p"},
    }
    s = _payload(_args(), {}, runs, labels)
    assert s["summary"]["numbers"]["accuracy"] == 1.0 and s["summary"]["numbers"]["images"] == 4
    assert s["summary"]["numbers"]["evals_per_image"] == 10.0 and s["summary"]["numbers"]["complete"]
    assert s["summary"]["numbers-flow"]["accuracy"] == 0.75
    assert s["agreement"]["numbers vs numbers-flow"] == 0.75


def test_an_unfinished_run_is_marked_and_scored_on_its_pairs():
    labels = np.array([0, 1, 2, 3])
    s = _payload(_args(), {}, {"numbers-flow naive": {"picks": [0, 5], "evals": [244.0, 244.0]}}, labels)
    r = s["summary"]["numbers-flow naive"]
    assert (r["images"], r["complete"], r["accuracy"]) == (2, False, 0.5)
    assert s["agreement"] == {}


def test_the_grid_matters_only_to_exhaustive():
    assert policy_args(_args(n_grid=5)) == policy_args(_args(n_grid=10)) == ["halving", None]
    assert policy_args(_args(policy="exhaustive", n_grid=5)) == ["exhaustive", 5]
