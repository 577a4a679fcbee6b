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
    ave = {"results": [_row("exhaustive-5", 500.0, 339.0)], "images": 2, "device": "cpu", "date": "2026-12-02", "_file": "x.json"}
    assert "--memo" not in "\n".join(_front("numbers", ave))
