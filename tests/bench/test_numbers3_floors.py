"""bench/numbers3_floors.py: digit-by-digit accuracy, and a held-out front's rows beside the SVC on its triples."""

import json

import numpy as np
import pytest

from bench.numbers3_floors import digit_accuracy, front_by_digit


def test_digit_accuracy_counts_each_position():
    acc = digit_accuracy([123, 124, 923, 0], [123, 123, 123, 1])
    assert acc == {"triple": 0.25, "first": 0.75, "second": 1.0, "third": 0.5, "images": 4}


def _front(tmp_path, y, every, split="heldout", model="numbers3"):
    idx = np.arange(0, len(y), every)
    picks = y[idx].copy()
    picks[0] = (picks[0] + 1) % 1000  # one third-digit miss (or a carry) in the first triple
    payload = {"benchmark": "accuracy_vs_evals", "model": model, "split": split, "every": every}
    payload |= {"images": len(idx), "labels": y[idx].tolist()}
    payload["results"] = [{"name": "h", "evals_per_image": 1090.0}, {"name": "not saved", "evals_per_image": 1.0}]
    (tmp_path / "per_image").mkdir(exist_ok=True)
    (tmp_path / "f.json").write_text(json.dumps(payload))
    np.savez(tmp_path / "per_image" / "f.npz", names=np.array(["h"]), c0_label=picks)
    return str(tmp_path / "f.json"), idx


def test_front_by_digit_scores_the_fronts_subset_beside_the_svc_on_the_same_triples(tmp_path):
    y = np.arange(1000)[np.random.default_rng(0).permutation(1000)]
    svc = y.copy()
    svc[::2] = 0  # the SVC is wrong on every even triple
    path, idx = _front(tmp_path, y, every=8)
    f = front_by_digit(path, svc, y)
    assert f["every"] == 8 and f["images"] == 125 and [r["name"] for r in f["rows"]] == ["h"]
    assert f["rows"][0]["triple"] == pytest.approx(124 / 125) and f["rows"][0]["evals_per_image"] == 1090.0
    assert f["svc_same_triples"] == digit_accuracy(svc[idx], y[idx])


def test_front_by_digit_refuses_other_fronts(tmp_path):
    y = np.arange(1000)
    with pytest.raises(SystemExit, match="a train front; the floors are on held-out triples"):
        front_by_digit(_front(tmp_path, y, 8, split="train")[0], y, y)
    with pytest.raises(SystemExit, match="not a bench.accuracy_vs_evals result on numbers3"):
        front_by_digit(_front(tmp_path, y, 8, model="numbers")[0], y, y)
    path, _ = _front(tmp_path, y, 8)
    with pytest.raises(SystemExit, match="its labels are not those of the held-out split's triples 0, 8"):
        front_by_digit(path, y, y[::-1].copy())
