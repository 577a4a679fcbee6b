"""bench/report.py: the accuracy front's table says which rows ran with the memo and what is missing."""

from bench.accuracy_vs_evals import NUMBERS_CONFIGS
from bench.report import _front


def _row(name, evals, seconds, **extra):
    return {
        "name": name,
        "accuracy": 0.99,
        "evals_per_image": evals,
        "evals_spent_per_image": evals,
        "seconds": seconds,
        "batch_fill": 1.0,
        "device": "cpu",
        "backend": "aoti",
        "dtype": "float32",
        "date": "2026-12-02",
        **extra,
    }


def test_front_marks_memo_rows_and_names_missing_configurations():
    memo = "queries asked earlier in the same run were answered from memory"
    rows = [
        _row("exhaustive-5", 500.0, 339.0),
        _row("ttest p<1e-2 stratified", 2100.0, 12.5, memo=memo, queries_run_per_image=40.0),
        _row("ttest p<2e-3 min 10", 1450.0, 9.0, memo=memo, queries_run_per_image=0.109),
    ]
    ave = {"results": rows, "images": 1000, "device": "cpu", "date": "2026-12-02", "_file": "accuracy_vs_evals_t.json"}
    text = "\n".join(_front("numbers", ave))
    assert "| exhaustive-5 | 0.9900 | 500.0 | 500.0 | 339.0 | 1.000 |" in text
    assert "| 12.5\\* (40 run) |" in text and "| 9.0\\* (0.1 run) |" in text and "ran with `--memo`" in text
    missing = text.split("Not measured yet on these 1000 images: ")[1]
    assert "exhaustive-50" in missing and "ttest p<1e-2 stratified;" not in missing
    assert missing.count(";") == len(NUMBERS_CONFIGS) - 4  # all but the three rows: n - 3 names, n - 4 separators


def test_front_without_memo_rows_has_no_footnote():
    ave = {
        "results": [_row("exhaustive-5", 500.0, 339.0)],
        "images": 2,
        "device": "cpu",
        "date": "2026-12-02",
        "_file": "x.json",
    }
    assert "--memo" not in "\n".join(_front("numbers", ave))


def test_front_names_its_checkpoint_and_flags_an_earlier_one():
    from bench.common import trained_steps

    now = trained_steps("numbers")
    ave = {"results": [_row("exhaustive-5", 500.0, 339.0)], "images": 2, "device": "cpu", "date": "2026-12-02"}
    ave["_file"] = "x.json"
    assert "weights" not in "\n".join(_front("numbers", ave))  # an old file that did not record them
    shipped = "\n".join(_front("numbers", ave | {"weights": {"fingerprint": "f", "training_steps": now}}))
    assert f"weights of training step {now:,}," in shipped and "earlier" not in shipped
    early = "\n".join(_front("numbers", ave | {"weights": {"fingerprint": "e", "training_steps": 623}}))
    assert f"**earlier weights: training step 623** (the bundled model ships step {now:,})" in early


def test_calibration_table_takes_each_policy_from_its_newest_fit(tmp_path, monkeypatch):
    """A later fit of one policy (--policies adaptive) adds its row; the other policies' rows stay."""
    import json

    import bench.report as report

    def cal_row(policy, ece):
        m = {"ece": ece, "nll": 0.1, "accuracy": 0.99}
        return {
            "policy": policy,
            "heldout": {"policy": f"{policy}(...)", "images": 400},
            "temperature": 0.01,
            "floor": 0.003,
            "heldout_before": m,
            "heldout_after": m,
        }

    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    for date, rows in (
        ("2026-11-23", [cal_row("ttest", 0.05), cal_row("halving", 0.02)]),
        ("2026-12-06", [cal_row("adaptive", 0.01), cal_row("ttest", 0.03)]),
        (
            "2026-12-07",
            [cal_row("exhaustive", 0.04) | {"heldout": {"policy": "exhaustive(...)", "images": 250, "every": 8}}],
        ),
    ):
        (res / f"calibration_digits_cpu_{date}.json").write_text(
            json.dumps({"device": "cpu", "date": date, "results": rows})
        )
    monkeypatch.setattr(report, "ROOT", tmp_path)
    got = {r["policy"]: (r["heldout_after"]["ece"], f) for r, f in report._calibration_rows("digits")}
    assert got == {
        "ttest": (0.03, "calibration_digits_cpu_2026-12-06.json"),
        "halving": (0.02, "calibration_digits_cpu_2026-11-23.json"),
        "adaptive": (0.01, "calibration_digits_cpu_2026-12-06.json"),
        "exhaustive": (0.04, "calibration_digits_cpu_2026-12-07.json"),
    }
    text = report._render_rest([])
    assert (
        "| adaptive(...) | 400 |" in text
        and "| exhaustive(...) | 250 (one in 8) | 0.9900 |" in text  # a --heldout-front of a one-in-K front
        and "| 2026-11-23 |" in text
        and "[2026-12-06](../bench/results/calibration_digits_cpu_2026-12-06.json)" in text
    )


def test_ood_table_sums_the_junk_and_names_each_kind(monkeypatch):
    import bench.report as report

    res = {
        "device": "cpu",
        "date": "2026-12-06",
        "_file": "ood_digits_cpu_2026-12-06.json",
        "results": [
            {
                "policy": "halving",
                "margin": 2.0,
                "threshold": 0.3532,
                "false_positive_rate": 0.0025,
                "heldout_images": 397,
                "junk_detection_rate": 0.8889,
                "junk": {"blank": {"images": 3, "detected": 3}, "fashion_mnist": {"images": 50, "detected": 36}},
            }
        ],
    }
    monkeypatch.setattr(report, "_latest_per_fit", lambda prefix: [res] if prefix == "ood_digits" else [])
    text = "\n".join(report._ood())
    assert text.startswith("### Out-of-distribution flag")
    assert "| policy | threshold | held-out false positives | junk detected | blank | fashion mnist |" in text
    assert "| halving | 0.3532 | 0.25% of 397 | 39/53 (88.9%) | 3/3 | 36/50 |" in text
    assert "threshold = 2 x the train split's 99th percentile" in text


def test_ood_shows_the_newest_result_of_each_way_of_fitting(tmp_path, monkeypatch):
    import json

    import bench.report as report

    (tmp_path / "bench" / "results").mkdir(parents=True)

    def write(name, split, margin, fpr):
        row = {"policy": "halving", "margin": margin, "false_positive_rate": fpr}
        if split:
            row["fit_split"] = split
        (tmp_path / "bench" / "results" / name).write_text(json.dumps({"results": [row]}))

    write("ood_fashion_cpu_2026-12-06.json", None, 2.0, 0.1)  # older files have no fit_split: the train split
    write("ood_fashion_cpu_2026-12-07.json", "tune", 1.0, 0.2)
    write("ood_fashion_cpu_2026-12-07_train.json", "train", 2.0, 0.3)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    got = report._latest_per_fit("ood_fashion")
    assert [r["_file"] for r in got] == ["ood_fashion_cpu_2026-12-07.json", "ood_fashion_cpu_2026-12-07_train.json"]


def test_train_choice_lists_the_candidates_and_marks_the_shipped_rule(tmp_path, monkeypatch):
    import json

    import bench.report as report

    (tmp_path / "bench" / "results").mkdir(parents=True)
    res = {"images": 50, "every": 40, "device": "cpu", "date": "2026-12-07", "split": "train"}
    res["results"] = [_row("halving 1 3 11 / 25 5 1", 1090.0, 1.0), _row("halving 2 4 12 / 10 3 1", 2044.0, 2.0)]
    (tmp_path / "bench" / "results" / "accuracy_vs_evals_numbers3_train_every40.json").write_text(json.dumps(res))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    assert "(shipped)" not in "\n".join(report._train_choice())  # no model folder: nothing marked
    folder = tmp_path / "diffcls_fast" / "models" / "numbers3"
    folder.mkdir(parents=True)
    rule = {
        "calibration": {"temperature": 0.01, "floor": 0.001},
        "tuning": {"how": "the cheapest", "chosen": {"name": "halving 1 3 11 / 25 5 1"}},
    }
    (folder / "diffcls.json").write_text(json.dumps({"tuned": rule}))
    table = "\n".join(report._train_choice())
    assert "| **halving 1 3 11 / 25 5 1** (shipped) | 0.9900 | 1,090 |" in table
    assert "| halving 2 4 12 / 10 3 1 | 0.9900 | 2,044 |" in table and "--policy tuned" in table


def test_best_measured_reads_a_longer_front_on_its_first_images_and_skips_other_weights(tmp_path, monkeypatch):
    """The best row on the first N held-out images: a front on more images counts on its first N (its per-image
    picks); a one-in-K subset and a front of earlier weights do not count."""
    import json

    import numpy as np

    import bench.report as report
    from bench.common import trained_steps

    res = tmp_path / "bench" / "results"
    (res / "per_image").mkdir(parents=True)
    now = trained_steps("numbers")

    def front(tag, images, rows, every=1, steps=now, picks=None):
        labels = [0, 1, 2, 3, 0, 1][:images]
        payload = {"images": images, "every": every, "date": "2026-12-07", "labels": labels, "results": rows}
        payload["weights"] = {"fingerprint": tag, "training_steps": steps}
        (res / f"accuracy_vs_evals_numbers_{tag}.json").write_text(json.dumps(payload))
        z = {"names": np.array([r["name"] for r in rows])}
        for i, p in enumerate(picks or []):
            z |= {f"c{i}_label": np.array(p), f"c{i}_evals": np.full(images, 10.0 * (i + 1))}
        np.savez(res / "per_image" / f"accuracy_vs_evals_numbers_{tag}.npz", **z)

    # six images; on the first four, "b" is exact and "a" misses one, though "a" is better on all six
    front("long", 6, [_row("a", 10.0, 1.0), _row("b", 20.0, 1.0)], picks=[[0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 1, 0]])
    front("subset", 4, [_row("c", 1.0, 1.0) | {"accuracy": 1.0}], every=10)
    front("early", 4, [_row("d", 1.0, 1.0) | {"accuracy": 1.0}], steps=now - 1)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    best = report._best_measured("numbers", 4)
    assert best["name"] == "b" and best["accuracy"] == 1.0 and best["evals_per_image"] == 20.0
    assert report._best_measured("numbers", 7) is None


def test_numbers3_floors_table_lists_each_fronts_rows_beside_the_svc(tmp_path, monkeypatch):
    import json

    import bench.report as report

    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    acc = {"triple": 0.9, "first": 0.99, "second": 0.98, "third": 0.93, "images": 250}
    front = {"from": "f.json", "every": 8, "images": 250, "svc_same_triples": acc}
    front["rows"] = [acc | {"name": "halving 1 3 11 / 25 5 1", "triple": 0.992, "evals_per_image": 1090.0}]
    payload = {"svc_baseline": {"all_2000": acc | {"images": 2000}}, "fronts": [front]}
    (res / "numbers3_floors_cpu_2026-12-07.json").write_text(json.dumps(payload | {"device": "cpu", "date": "d"}))
    (res / "numbers3_floors_cpu_2026-12-08.json").write_text(json.dumps({"svc_baseline": {}}))  # no fronts: skipped
    monkeypatch.setattr(report, "ROOT", tmp_path)
    text = "\n".join(report._numbers3_floors())
    assert "| 250 (one in 8) | RBF SVC per digit | 0.9000 | 0.9900 | 0.9800 | 0.9300 | -- |" in text
    assert "| 250 (one in 8) | halving 1 3 11 / 25 5 1 | 0.9920 |" in text and "| 1,090 |" in text
    assert "| 2,000 (all) | RBF SVC per digit | 0.9000 |" in text and "numbers3_floors_cpu_2026-12-07.json" in text


def test_other_weights_compares_fingerprints_else_training_steps():
    from bench.common import other_weights

    now = {"fingerprint": "abc", "training_steps": 16000}
    assert other_weights(None, now) is None and other_weights({}, now) is None  # an older file: nothing to tell
    assert other_weights({"fingerprint": "abc", "training_steps": 1}, now) is None  # the fingerprint decides
    assert other_weights({"fingerprint": "old"}, now) == "fingerprint old, this model is abc"
    # a front annotated afterwards with its checkpoint's step only (fashion's first front: step 2,142)
    assert other_weights({"training_steps": 2142}, now) == "training step 2,142, this model is step 16,000"
    assert other_weights({"training_steps": 16000}, now) is None
    assert other_weights({"training_steps": 2142}, {"fingerprint": "abc"}) is None  # a model of no known step


def test_resume_refuses_a_front_of_other_weights_even_one_recorded_by_its_step_only(tmp_path):
    """--resume on fashion's first front (step 2,142, no fingerprint) with the shipped weights would relabel its
    rows as these weights'."""
    import json

    import numpy as np
    import pytest

    from bench.accuracy_vs_evals import _resume

    js, npz = tmp_path / "f.json", tmp_path / "f.npz"
    row = {"name": "a", "policy": "p"}
    js.write_text(json.dumps({"weights": {"training_steps": 2142}, "results": [row]}))
    arrays = {"c0_label": np.zeros(3), "c0_evals": np.zeros(3), "c0_mean_errors": np.zeros((3, 2))}
    np.savez(npz, names=np.array(["a"]), c0_n_scores=np.zeros((3, 2)), **arrays)
    with pytest.raises(SystemExit, match=r"^f.json measured other weights \(training step 2,142, this model is step"):
        _resume(js, npz, 3, {"fingerprint": "new", "training_steps": 16000})
    rows, per_image = _resume(js, npz, 3, {"fingerprint": "new", "training_steps": 2142})
    assert rows == [row] and list(per_image) == ["a"]


def test_front_heading_counts_the_classes_of_its_images():
    ave = {"results": [_row("exhaustive-5", 50.0, 1.0)], "images": 3, "device": "cpu", "date": "d", "_file": "x.json"}
    assert "3 held-out images of 2 classes" in "\n".join(_front("numbers", ave | {"labels": [0, 1, 1]}))
    assert "3 held-out images," in "\n".join(_front("numbers", ave))  # an old file without labels


def test_every_k_refuses_a_subset_of_few_classes():
    import pytest

    from bench.accuracy_vs_evals import check_subset_classes

    round_robin = [i % 10 for i in range(2000)]
    with pytest.raises(SystemExit, match="--every 10 takes 200 images of only 1 of 10 classes .* e.g. 7 or 11"):
        check_subset_classes(round_robin[::10], 10, 10)
    check_subset_classes(round_robin[::7], 10, 7)  # every class
    with pytest.raises(SystemExit, match="e.g. 13 or 17"):  # 7 and 11 divide 77
        check_subset_classes([i % 77 for i in range(770)][::7], 77, 7)
    check_subset_classes(round_robin[:4], 10, 1)  # a prefix is the user's choice
    three = [i % 1000 for i in range(2000)]
    check_subset_classes(three[::8], 1000, 8)  # numbers3, one in 8: 125 classes in 250 images


def test_flow_check_table_marks_an_unfinished_run(monkeypatch):
    import bench.report as report

    pol = "halving(rounds=[2, 4, 12], keep=[10, 3, 1], t_band=[0.15, 0.6])"
    res = {
        "device": "cpu",
        "date": "2026-12-07",
        "pairs": 1000,
        "_file": "flow_check_cpu_2026-12-07.json",
        "summary": {
            "numbers-flow": {
                "accuracy": 0.991,
                "images": 1000,
                "complete": True,
                "evals_per_image": 244.0,
                "policy": pol,
            },
            "numbers": {"accuracy": 0.99, "images": 100, "complete": False, "evals_per_image": 244.0, "policy": pol},
        },
        "agreement": {"numbers vs numbers-flow": 0.99},
    }
    monkeypatch.setattr(report, "_latest", lambda prefix: res if prefix == "flow_check" else None)
    text = "\n".join(report._flow_check())
    assert "| `numbers` (DDPM, ε objective), scored as DDPM | 100 (so far) | **0.9900** | 244 |" in text
    assert "scored as flow: σ noising, velocity target | 1000 | **0.9910** | 244 |" in text
    assert text.index("`numbers` (DDPM") < text.index("`numbers-flow` (rectified")  # the table's fixed order
