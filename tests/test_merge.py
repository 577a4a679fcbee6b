"""diffcls-fast merge: parts of one run join in split order; other settings, overlaps and gaps are refused by name."""

import json

import pytest

from diffcls_fast import UserError
from diffcls_fast.engine.calibration import ece, nll
from diffcls_fast.merge import merge_parts

SETTINGS = {"format": 3, "model": "m1", "seed": 0, "temperature": 0.01, "posterior_floor": 0.0, "data": "d1"}


def _row(index, total=7, shard="0/1", config="k1", settings=SETTINGS, correct=1, p=0.9):
    return {
        "id": f"digits/heldout/{100 + index}",
        "config": config,
        "true_label": 1,
        "correct": correct,
        "p_true": p if correct else 0.05,
        "confidence": p,
        "label": "one",
        "evaluations": 64,
        "evaluations_spent": 64 + index,
        "error": None,
        "policy": "halving(...)",
        "index": index,
        "total": total,
        "shard": shard,
        "backend": "torch",
        "kernels": "reference",
        "dtype": "float32",
        "settings": settings,
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _shards(tmp_path, n=3, total=7, skip=()):
    return [
        _write(
            tmp_path / f"r.shard-{i}-of-{n}.jsonl",
            [_row(j, total, f"{i}/{n}", correct=int(j % 4 != 3)) for j in range(i, total, n)],
        )
        for i in range(n)
        if i not in skip
    ]


def _err(fn):
    with pytest.raises(UserError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_merge_writes_split_order_and_the_eval_summary(tmp_path):
    parts = _shards(tmp_path)
    out = tmp_path / "merged.jsonl"
    s = merge_parts(out, list(reversed(parts)))  # the order of the parts does not matter
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(7))
    assert rows[1] == _row(1, 7, "1/3", correct=1)  # rows are copied unchanged
    correct = [int(j % 4 != 3) for j in range(7)]
    conf = [0.9] * 7
    p_true = [0.9 if c else 0.05 for c in correct]
    assert s["images"] == 7 and s["accuracy"] == sum(correct) / 7 and s["failed"] == 0
    assert (
        s["evals_per_image"] == 64 and s["evals_spent_per_image"] == sum(64 + j for j in range(7)) / 7
    )  # needed vs spent
    assert s["ece"] == round(ece(conf, correct), 5) and s["nll"] == round(nll(p_true), 5)
    assert s["split"] == "heldout" and s["model"] == "digits" and s["parts_shards"] == ["0/3", "1/3", "2/3"]
    assert s["seconds"] is None  # not in the rows
    assert merge_parts(out, parts) == s  # rerun: the merged file is replaced, not appended to
    assert len(out.read_text().splitlines()) == 7


def test_gap_names_the_missing_shard(tmp_path):
    parts = _shards(tmp_path, skip=(1,))
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
    assert "2 of the run's 7 images are in no part (indexes 1, 4)" in msg and "shard 1/3" in msg
    assert not (tmp_path / "m.jsonl").exists()  # nothing written on a refusal


def test_unfinished_shard_is_a_gap(tmp_path):
    parts = _shards(tmp_path)
    lines = parts[2].read_text().splitlines()
    parts[2].write_text(lines[0] + "\n" + lines[1][:30])  # one row, then a torn line (a killed shard)
    before = parts[2].read_bytes()
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
    assert "(indexes 5)" in msg and "shard 2/3" in msg and "rerun it" in msg
    assert parts[2].read_bytes() == before  # merge only reads: the torn line is the shard's to cut when it resumes


def test_parts_are_opened_read_only(tmp_path, monkeypatch):
    import os

    parts = _shards(tmp_path)
    real_open, flags = os.open, {}

    def spy(path, fl, *args, **kw):
        flags[str(path)] = fl
        return real_open(path, fl, *args, **kw)

    monkeypatch.setattr(os, "open", spy)  # works as root too, where a chmod 444 file stays writable
    assert merge_parts(tmp_path / "m.jsonl", parts)["images"] == 7
    assert all(flags[str(p)] & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC) == 0 for p in parts)


def test_a_shard_still_writing_is_refused_and_readers_share(tmp_path):
    from diffcls_fast.evaluate import OutFile

    parts = _shards(tmp_path)
    writer = OutFile(parts[1])  # an eval still appending to shard 1 (holds the exclusive lock)
    try:
        msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
        assert f"{parts[1]}: is being written by an eval" in msg
    finally:
        writer.close()
    assert not (tmp_path / "m.jsonl").exists()
    readers = [OutFile(parts[0], readonly=True), OutFile(parts[0], readonly=True)]  # two merges may read one part
    try:
        assert [len(r.rows) for r in readers] == [3, 3]
        assert "being written by another eval" in _err(lambda: OutFile(parts[0]))  # but no eval may append meanwhile
    finally:
        for r in readers:
            r.close()


def test_a_larger_limit_on_one_shard_makes_the_run_larger(tmp_path):
    parts = _shards(tmp_path, total=6)
    _write(parts[0], [_row(0, 6, "0/3"), _row(3, 6, "0/3"), _row(6, 9, "0/3")])  # shard 0 resumed with --limit 9
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
    assert "2 of the run's 9 images" in msg and "(indexes 7, 8)" in msg and "shards 1/3, 2/3" in msg


def test_overlap_is_refused(tmp_path):
    parts = _shards(tmp_path)
    assert "the parts overlap" in _err(lambda: merge_parts(tmp_path / "m.jsonl", [*parts, parts[0]]))
    other = _write(tmp_path / "other.jsonl", [_row(4, 7, "1/3")])
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", [*parts, other]))
    assert "digits/heldout/104" in msg and "other.jsonl:1" in msg and "overlap" in msg


def test_mixed_settings_are_refused(tmp_path):
    parts = _shards(tmp_path)
    _write(parts[1], [_row(1, 7, "1/3"), _row(4, 7, "1/3", config="k2", settings={**SETTINGS, "seed": 1})])
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
    assert f"{parts[1]}:2: written with different settings" in msg and "seed 0 -> 1" in msg


def test_rows_without_a_place_and_bad_outputs(tmp_path):
    old = _row(0)
    del old["index"]
    assert "no valid index/total" in _err(
        lambda: merge_parts(tmp_path / "m.jsonl", [_write(tmp_path / "old.jsonl", [old])])
    )
    parts = _shards(tmp_path)
    assert "also one of the parts" in _err(lambda: merge_parts(parts[0], parts))
    assert "is a folder" in _err(lambda: merge_parts(tmp_path, parts))
    assert "no such folder" in _err(lambda: merge_parts(tmp_path / "nope" / "m.jsonl", parts))
    assert "hold no rows" in _err(lambda: merge_parts(tmp_path / "m.jsonl", [_write(tmp_path / "empty.jsonl", [])]))
    assert "not an eval row" in _err(
        lambda: merge_parts(tmp_path / "m.jsonl", [_write(tmp_path / "x.jsonl", [{"id": 1}])])
    )


def test_other_policies_options_do_not_split_a_run(tmp_path):
    """Shards run with another policy's option (--n-grid under ttest) are one run; the policy's own options are not."""
    ttest = {"name": "ttest", "n_grid": 50, "min_scores": 20, "rounds": [2, 4, 12]}
    base = {**SETTINGS, "policy": ttest}
    parts = [
        _write(tmp_path / "a.jsonl", [_row(0, 2, settings=base)]),
        _write(
            tmp_path / "b.jsonl",
            [_row(1, 2, config="k2", settings={**base, "policy": {**ttest, "n_grid": 10, "rounds": [1, 2]}})],
        ),
    ]
    assert merge_parts(tmp_path / "m.jsonl", parts)["images"] == 2
    _write(parts[1], [_row(1, 2, config="k3", settings={**base, "policy": {**ttest, "min_scores": 10}})])
    assert "written with different settings" in _err(lambda: merge_parts(tmp_path / "m2.jsonl", parts))


def test_an_unrelated_existing_file_is_not_overwritten(tmp_path):
    parts = _shards(tmp_path)
    precious = tmp_path / "existing.jsonl"
    precious.write_text("precious\n")
    msg = _err(lambda: merge_parts(precious, parts))
    assert "exists and it is not an eval results file" in msg and "--overwrite" in msg
    assert "append" not in msg and "use another --out" not in msg  # merge neither appends nor has --out
    assert precious.read_text() == "precious\n"
    other = _write(tmp_path / "other.jsonl", [_row(0, config="k9", settings={**SETTINGS, "seed": 5})])
    assert "holds results of another run" in _err(lambda: merge_parts(other, parts))
    assert merge_parts(precious, parts, overwrite=True)["images"] == 7  # asked for: replaced
    assert merge_parts(tmp_path / "empty.jsonl", parts)["images"] == 7  # a new file is fine
    (tmp_path / "blank.jsonl").write_text("")
    assert merge_parts(tmp_path / "blank.jsonl", parts)["images"] == 7  # so is an empty one


def test_a_damaged_part_is_refused_in_merge_words(tmp_path):
    parts = _shards(tmp_path)
    parts[1].write_text("not json\n")
    msg = _err(lambda: merge_parts(tmp_path / "m.jsonl", parts))
    assert f"{parts[1]}:1: not a JSON line; merge reads only eval --out files" == msg


@pytest.mark.parametrize("where", ["/proc/x.jsonl", "readonly"])
def test_an_unwritable_output_is_one_line(tmp_path, where):
    import os

    parts = _shards(tmp_path)
    if where == "readonly":
        if os.geteuid() == 0:  # root writes through permissions; /proc is unwritable for root too
            pytest.skip("running as root: permissions do not stop writes")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        where = str(ro / "o.jsonl")
    msg = _err(lambda: merge_parts(where, parts))
    assert msg.startswith(f"merge: cannot write {where} (")
