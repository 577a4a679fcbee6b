"""scripts/fit_calibration.py --heldout-front: held-out calibration measured from a front's saved per-image errors."""

import json

import numpy as np
import pytest

from diffcls_fast.engine.results import posterior

from ..scripts_import import script_module


@pytest.fixture(scope="module")
def fit_calibration():
    yield from script_module("fit_calibration")


def _front(tmp_path, split="heldout"):
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
