"""scripts/fit_calibration.py --heldout-front: held-out calibration measured from a front's saved per-image errors."""

import json

import numpy as np
import pytest

from diffcls_fast.engine.results import posterior

from ..scripts_import import script_module


@pytest.fixture(scope="module")
def fit_calibration():
    yield from script_module("fit_calibration")


def _front(tmp_path, split="heldout", **extra):
    rng = np.random.default_rng(0)
    n, c = 7, 4
    errors = rng.random((n, c)).astype(np.float32)
    n_scores = np.full((n, c), 10)
    n_scores[:, 3] = 2  # class 3 pruned early: not a finalist
    labels = [0, 1, 2, 0, 1, 2, 0]
    picked = np.argmin(np.where(n_scores == 10, errors, np.inf), axis=1)
    payload = {
        "benchmark": "accuracy_vs_evals",
        "split": split,
        "images": n,
        "labels": labels,
        "results": [{"name": "other", "policy": "exhaustive(grid=5)"}, {"name": "h", "policy": "halving(x)"}],
        **extra,
    }
    (tmp_path / "per_image").mkdir()
    (tmp_path / "f.json").write_text(json.dumps(payload))
    z = {"names": np.array(["other", "h"])}
    for i in range(2):
        z |= {f"c{i}_label": picked, f"c{i}_evals": np.full(n, 64.0), f"c{i}_n_scores": n_scores}
        z |= {f"c{i}_mean_errors": errors if i == 1 else errors * 0}
    np.savez(tmp_path / "per_image" / "f.npz", **z)
    return tmp_path / "f.json", errors, n_scores, picked, np.array(labels)


def test_heldout_front_gives_the_fronts_errors_and_labels(fit_calibration, tmp_path):
    path, errors, n_scores, picked, labels = _front(tmp_path)
    res, y, info = fit_calibration.from_front(path, "halving(x)")
    assert len(res) == 7 and info["images"] == 7 and info["from_front"] == "f.json" and info["evals_per_image"] == 64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(res[2].mean_errors, errors[2])  # the row of this policy, not the other one
    assert info["accuracy"] == pytest.approx(float(np.mean(picked == labels)))
    m = fit_calibration.metrics(res, y, 0.1, 0.01)
    p_true = [posterior(errors[k], n_scores[k], int(picked[k]), 0.1, 0.01)[labels[k]] for k in range(7)]
    assert m["nll"] == pytest.approx(float(-np.mean(np.log(p_true))), abs=1e-4)
    assert len(fit_calibration.from_front(path, "halving(x)", limit=3)[0]) == 3


def test_heldout_front_refuses_train_fronts_and_missing_policies(fit_calibration, tmp_path):
    path, *_ = _front(tmp_path)
    with pytest.raises(SystemExit, match=r"f.json has no row of ttest\(\) \(it has: exhaustive\(grid=5\); halving"):
        fit_calibration.from_front(path, "ttest()")
    train = tmp_path / "t"
    train.mkdir()
    with pytest.raises(SystemExit, match="is a train front; --heldout-front takes held-out ones"):
        fit_calibration.from_front(_front(train, split="train")[0], "halving(x)")


def test_heldout_front_refuses_a_front_of_another_model_or_of_other_weights(fit_calibration, tmp_path):
    """The fit calibrates these weights: held-out errors of another model or checkpoint would measure nothing."""
    now = {"fingerprint": "abc", "training_steps": 16000}
    path, *_ = _front(tmp_path, model="digits", weights={"fingerprint": "abc", "training_steps": 16000})
    with pytest.raises(SystemExit, match="^f.json is a front of digits; this fit calibrates fashion$"):
        fit_calibration.from_front(path, "halving(x)", model="fashion", weights=now)
    assert len(fit_calibration.from_front(path, "halving(x)", model="digits", weights=now)[0]) == 7
    for k, weights in enumerate(({"fingerprint": "old", "training_steps": 16000}, {"training_steps": 2142})):
        d = tmp_path / f"w{k}"
        d.mkdir()
        path, *_ = _front(d, model="fashion", weights=weights)
        with pytest.raises(SystemExit, match=r"^f.json measured other weights \((fingerprint old|training step 2,142)"):
            fit_calibration.from_front(path, "halving(x)", model="fashion", weights=now)


def test_heldout_front_of_a_one_in_k_subset_says_so_and_a_missing_npz_is_one_line(fit_calibration, tmp_path):
    path, *_ = _front(tmp_path, every=8)
    assert fit_calibration.from_front(path, "halving(x)")[2]["every"] == 8
    (tmp_path / "e1").mkdir()
    assert "every" not in fit_calibration.from_front(_front(tmp_path / "e1", every=1)[0], "halving(x)")[2]
    (tmp_path / "per_image" / "f.npz").unlink()
    with pytest.raises(SystemExit, match=r"^f.json: its per-image errors \(.*f.npz\) are missing"):
        fit_calibration.from_front(path, "halving(x)")
