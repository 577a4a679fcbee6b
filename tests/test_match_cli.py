"""``diffcls-fast match`` and ``eval --task swap``: output, one-line errors, resumable JSONL."""

import json
from pathlib import Path

import pytest

from diffcls_fast import swap_eval
from diffcls_fast.cli import main
from diffcls_fast.data.digits import CLASS_NAMES, load_split

ROOT = Path(__file__).resolve().parents[1]
D3, D7 = str(ROOT / "examples" / "digit-3.png"), str(ROOT / "examples" / "digit-7.png")
C3, C7 = "a handwritten digit three", "a handwritten digit seven"


def _one_line_error(capsys, argv, fragment):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse-level checks (e.g. --n-grid 0) exit with one line too
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err


def test_match_prints_the_matrix_and_winoground_scores(capsys):
    assert main(["match", D3, D7, "--captions", C3, C7, "--n-grid", "4", "--no-cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"# c0 = {C3!r}" and out[1] == f"# c1 = {C7!r}"
    assert out[2].split() == ["image", "c0", "c1", "best"]
    assert out[3].split()[0] == D3 and out[3].split()[-1] == "c0"
    assert out[4].split()[0] == D7 and out[4].split()[-1] == "c1"
    assert out[5].startswith("winoground: text score 1, image score 1, group score 1")


def test_match_json(capsys):
    assert main(["match", D3, D7, D3, "--captions", C3, C7, "--n-grid", "4", "--no-cache", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["images"] == [D3, D7, D3] and row["captions"] == [C3, C7]
    assert len(row["errors"]) == 3 and row["errors"][0] == row["errors"][2]
    assert row["n_grid"] == 4 and row["evaluations"] == 3 * 2 * 4
    assert "winoground" not in row  # only for 2 images x 2 captions
    assert main(["match", D3, D7, "--captions", C3, C7, "--n-grid", "4", "--no-cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["winoground"] == {"text": True, "image": True, "group": True}


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ([], "match needs --captions"),
        (["--captions"], "the caption list is empty"),
        (["--captions", C3, " "], "caption 1 is empty"),
        (["--captions", C3, C7, "--policy", "ttest"], "not --policy"),
        (["--captions", C3, C7, "--n-grid", "0"], "--n-grid"),
    ],
)
def test_match_bad_arguments_are_one_line_errors(capsys, extra, fragment):
    _one_line_error(capsys, ["match", D3, *extra], fragment)


def test_match_missing_image(capsys):
    _one_line_error(capsys, ["match", "nope.png", "--captions", C3, C7], "no such file")


def test_swap_eval_needs_a_swap_set(capsys):
    _one_line_error(capsys, ["eval", "--model", "digits", "--task", "swap"], "no swap set ships for model 'digits'")


def _digit_groups(model_name):
    # A stand-in swap set on the digits model: image j of a group is a held-out digit, caption j names it.
    pil, y, idx = load_split("heldout")
    groups, k = [], 0
    while len(groups) < 3:
        if y[k] != y[k + 1]:
            caps = [f"a handwritten digit {CLASS_NAMES[y[k]]}", f"a handwritten digit {CLASS_NAMES[y[k + 1]]}"]
            groups.append({"id": f"{idx[k]}-{idx[k + 1]}", "images": [pil[k], pil[k + 1]], "captions": caps})
        k += 2
    return groups


def test_swap_eval_scores_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(swap_eval, "load_swap_set", _digit_groups)
    out = tmp_path / "swap.jsonl"
    args = ["eval", "--model", "digits", "--task", "swap", "--n-grid", "4", "--no-cache", "--out", str(out), "--json"]
    assert main([*args, "--limit", "2"]) == 0
    s = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert s["task"] == "swap" and s["groups"] == 2 and s["resumed"] == 0 and s["n_grid"] == 4
    assert s["evals_per_group"] == 2 * 2 * 4
    for k in ("text", "image", "group"):
        assert s[f"{k}_score"] == s[f"{k}_correct"] / 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert set(r) >= {"id", "errors", "text", "image", "group", "evaluations", "seconds"}
        assert len(r["errors"]) == 2 and len(r["errors"][0]) == 2
        assert r["group"] == (r["text"] and r["image"])
    # Rerun with one more group: two resumed, one scored, the file grows by one line.
    assert main(args) == 0
    s2 = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert s2["groups"] == 3 and s2["resumed"] == 2
    assert len(out.read_text().splitlines()) == 3
    # Other settings never mix into the same file.
    _one_line_error(capsys, [*args[:-4], "--n-grid", "5", "--out", str(out)], "different settings")
    # Plain-text summary.
    assert main(args[:-1]) == 0
    assert capsys.readouterr().out.startswith("swap (3 groups, n_grid 4): text ")


@pytest.mark.slow
def test_swap_eval_on_numbers_end_to_end(capsys):
    assert (
        main(["eval", "--model", "numbers", "--task", "swap", "--limit", "2", "--n-grid", "5", "--no-cache", "--json"])
        == 0
    )
    s = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert s["groups"] == 2 and s["model"] == "numbers" and s["evals_per_group"] == 2 * 2 * 5
    assert 0 <= s["group_correct"] <= min(s["text_correct"], s["image_correct"]) <= 2
