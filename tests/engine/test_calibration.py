"""Calibration: ECE and NLL against direct formulas, the floored posterior, and the (T, floor) fit."""

import numpy as np
import pytest

from diffcls_fast.engine.calibration import calibrated, ece, fit_calibration, nll
from diffcls_fast.engine.results import finalists, posterior


def _ece_reference(conf, correct, n_bins=15):
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        m = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return total


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_the_binned_definition(seed):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, 500)
    conf[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 14 / 15]  # bin edges
    correct = (rng.uniform(0, 1, 500) < conf).astype(float)
    assert ece(conf, correct) == pytest.approx(_ece_reference(conf, correct), abs=1e-12)


def test_ece_and_nll_edge_cases():
    assert ece(np.ones(10), np.ones(10)) == 0.0
    assert ece(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)
    assert ece(np.zeros(0), np.zeros(0)) == 0.0
    assert nll(np.array([1.0, np.exp(-2.0)])) == pytest.approx(1.0)
    assert np.isfinite(nll(np.array([0.0])))  # clipped, never inf


@pytest.mark.parametrize("floor", [0.0, 0.01, 0.3])
def test_floored_posterior_keeps_the_label_on_top_and_sums_to_one(floor):
    rng = np.random.default_rng(1)
    for _ in range(50):
        c = int(rng.integers(2, 30))
        means = rng.uniform(0, 1, c)
        n = rng.integers(1, 4, c)
        label_pool = np.flatnonzero(n == n.max())
        label = int(label_pool[np.argmin(means[label_pool])])
        p = posterior(means, n, label, temperature=0.05, floor=floor)
        assert p.sum() == pytest.approx(1.0) and int(np.argmax(p)) == label
        pruned = ~finalists(n, label)
        assert np.allclose(p[pruned], floor / c)  # a pruned class gets exactly the floor's share
        assert np.allclose(p, calibrated(means, finalists(n, label), 0.05, floor))


def test_fit_recovers_a_known_temperature_and_needs_a_floor_for_pruned_truths():
    rng = np.random.default_rng(0)
    t_true, c = 0.02, 10
    means, labels = [], []
    for _ in range(3000):
        m = rng.normal(0.0, 0.05, c)
        p = np.exp(-m / t_true)
        labels.append(int(rng.choice(c, p=p / p.sum())))  # labels drawn from the softmax at t_true
        means.append(m)
    fins = [np.ones(c, bool)] * len(means)
    t, floor = fit_calibration(means, fins, labels)
    assert t == pytest.approx(t_true, rel=0.15) and floor < 0.01
    # the true class pruned 5% of the time: only a floor keeps the NLL finite and small
    fins2 = [f.copy() for f in fins]
    for k in range(0, len(fins2), 20):
        fins2[k][labels[k]] = False
    _, floor2 = fit_calibration(means, fins2, labels)
    assert floor2 > 0.01


def test_a_model_calibration_is_used_per_policy_and_explicit_values_win(tmp_path):
    import dataclasses

    from diffcls_fast import DiffusionClassifier, load_model

    model = load_model("digits")
    m = dataclasses.replace(model, calibration={"halving": {"temperature": 0.003, "floor": 0.02}})
    c = DiffusionClassifier(m, "halving", use_cache=False)
    assert (c.temperature, c.posterior_floor) == (0.003, 0.02)
    c = DiffusionClassifier(m, "ttest", use_cache=False)  # no calibration shipped for ttest: the plain default
    assert (c.temperature, c.posterior_floor) == (1e-2, 0.0)
    c = DiffusionClassifier(
        m, "halving", temperature=0.5, use_cache=False
    )  # an explicit temperature: no floor unless asked
    assert (c.temperature, c.posterior_floor) == (0.5, 0.0)
    c = DiffusionClassifier(m, "halving", posterior_floor=0.1, use_cache=False)
    assert (c.temperature, c.posterior_floor) == (0.003, 0.1)


def test_a_calibration_applies_only_to_the_loss_it_was_fitted_with():
    """x0 errors are ~40x smaller than l2's: an l2 temperature would make x0 posteriors confident
    nonsense (held-out ECE 0.83 on digits), so another loss gets the default, with a warning."""
    import dataclasses
    import warnings

    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.engine import options as classifier
    from diffcls_fast.errors import DiffclsWarning

    classifier._WARNED_LOSS.clear()  # the warning is once per (model, policy, loss) and process
    model = load_model("digits")
    m = dataclasses.replace(
        model,
        calibration={
            "halving": {"temperature": 0.003, "floor": 0.02},
            "ttest": {"temperature": 0.004, "floor": 0.01, "loss": "x0"},
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DiffusionClassifier(m, "halving", use_cache=False).temperature == 0.003  # no "loss": fitted with l2
        assert DiffusionClassifier(m, "ttest", loss="x0", use_cache=False).temperature == 0.004
        assert (
            DiffusionClassifier(m, "halving", loss="x0", temperature=0.5, use_cache=False).temperature == 0.5
        )  # explicit: no warning
    with pytest.warns(
        DiffclsWarning,
        match="calibration for halving was fitted with loss l2; with loss x0 the posteriors are uncalibrated",
    ):
        c = DiffusionClassifier(m, "halving", loss="x0", use_cache=False)
    assert (c.temperature, c.posterior_floor) == (1e-2, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not again for every view a server makes per request
        assert c.with_options(seed=3).temperature == 1e-2
    with pytest.warns(DiffclsWarning, match="fitted with loss x0; with loss l2"):
        v = DiffusionClassifier(m, "halving", use_cache=False).with_options(policy="ttest")
    assert (v.temperature, v.posterior_floor) == (1e-2, 0.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"halving": {"temperature": 0}},
        {"halving": {"temperature": 0.01, "floor": 1.0}},
        {"halving": 3},
        [1],
        {"halving": {"temperature": 0.01, "loss": "mse"}},
    ],
)
def test_a_malformed_calibration_in_diffcls_json_is_a_user_error(tmp_path, bad):
    import json
    import shutil
    from pathlib import Path

    from diffcls_fast import UserError, load_model

    src = Path(__file__).resolve().parents[2] / "diffcls_fast" / "models" / "digits"
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "diffcls.json").read_text())
    meta["calibration"] = bad
    (dst / "diffcls.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="calibration"):
        load_model(str(dst))


def test_bad_posterior_floor_is_a_user_error():
    from diffcls_fast import DiffusionClassifier, UserError

    for bad in (1.0, -0.1, float("nan"), "0.1"):
        with pytest.raises(UserError, match="posterior_floor"):
            DiffusionClassifier("digits", posterior_floor=bad, use_cache=False)


def test_eval_json_reports_ece_and_nll(capsys):
    import json

    from diffcls_fast.cli import main

    assert main(["eval", "--limit", "12", "--policy", "halving", "--no-cache", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert 0 <= s["ece"] <= 1 and s["nll"] >= 0 and s["images"] == 12
    assert {"temperature", "posterior_floor"} <= set(s)
