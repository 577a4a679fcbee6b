"""--shard I/N and torchrun's RANK/WORLD_SIZE: parsing, slices, part names, and the checks made before any model
loads."""

import argparse

import pytest

from diffcls_fast import UserError
from diffcls_fast.cli import main
from diffcls_fast.shard import ShardSpec, apply_scale_out, parse_shard, resolve_shard, shard_from_env


def _err(fn):
    with pytest.raises(UserError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_parse_shard_zero_based():
    assert parse_shard("0/3") == ShardSpec(0, 3)
    assert parse_shard(" 2 / 3 ") == ShardSpec(2, 3)
    assert str(parse_shard("1/4")) == "1/4"
    assert "0 <= I < N" in _err(lambda: parse_shard("3/3"))  # the last of 3 is 2/3
    assert "0 <= I < N" in _err(lambda: parse_shard("0/0"))
    for bad in ("1", "a/b", "-1/3", "1/3/4", "", "1.5/3"):
        assert "expected I/N" in _err(lambda bad=bad: parse_shard(bad))


def test_interleaved_slices_cover_the_run_once():
    positions = list(range(10))
    slices = [ShardSpec(i, 3).select(positions) for i in range(3)]
    assert slices == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(slices, [])) == positions
    assert all(ShardSpec(i, 3).owns(p) for i, s in enumerate(slices) for p in s)
    assert ShardSpec(4, 5).select([0, 1, 2]) == []  # more shards than images: an empty shard is fine


def test_part_names():
    assert ShardSpec(0, 3).part_path("runs/results.jsonl").as_posix() == "runs/results.shard-0-of-3.jsonl"
    assert ShardSpec(2, 3).part_path("results").as_posix() == "results.shard-2-of-3"


def test_torchrun_environment():
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "1"}) is None  # WORLD_SIZE too, or it is not torchrun
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (ShardSpec(1, 4), 1)
    assert shard_from_env({"RANK": "5", "WORLD_SIZE": "8"}) == (ShardSpec(5, 8), None)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None  # one process is not sharded
    assert "expected integers" in _err(lambda: shard_from_env({"RANK": "x", "WORLD_SIZE": "2"}))
    assert "0 <= RANK < WORLD_SIZE" in _err(lambda: shard_from_env({"RANK": "2", "WORLD_SIZE": "2"}))
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}
    assert resolve_shard(None, None, env)[0] == ShardSpec(1, 3)  # on this CPU-only machine the device stays the default
    assert resolve_shard("1/3", "cpu", env) == (ShardSpec(1, 3), "cpu")
    assert "disagrees with torchrun" in _err(lambda: resolve_shard("0/3", None, env))
    assert resolve_shard("2/5", None, {}) == (ShardSpec(2, 5), None)


def _ns(**kw):
    base = dict(
        shard=None,
        device=None,
        out=None,
        task="classify",
        ray=False,
        ray_address=None,
        ray_workers=None,
        ray_gpus=None,
        ray_cpus=None,
    )
    return argparse.Namespace(**{**base, **kw})


def test_apply_scale_out(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    a = _ns(shard="1/3", out=str(tmp_path / "r.jsonl"))
    apply_scale_out(a)
    assert a.shard_spec == ShardSpec(1, 3) and a.out == str(tmp_path / "r.shard-1-of-3.jsonl")
    a = _ns(shard="1/3", out=str(tmp_path / "r.shard-1-of-3.jsonl"))  # already a part's name: kept
    apply_scale_out(a)
    assert a.out == str(tmp_path / "r.shard-1-of-3.jsonl")
    a = _ns()
    apply_scale_out(a)
    assert a.shard_spec is None and a.out is None
    assert "needs --out" in _err(lambda: apply_scale_out(_ns(shard="0/2")))
    assert "do not combine" in _err(lambda: apply_scale_out(_ns(shard="0/2", ray=True, out="x.jsonl")))
    assert "--ray-workers needs --ray" in _err(lambda: apply_scale_out(_ns(ray_workers=2)))
    assert "for --task classify" in _err(lambda: apply_scale_out(_ns(shard="0/2", out="x.jsonl", task="swap")))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    a = _ns(out=str(tmp_path / "t.jsonl"))
    apply_scale_out(a)  # torchrun without --shard
    assert a.shard_spec == ShardSpec(0, 2) and a.out.endswith("t.shard-0-of-2.jsonl")
    # --ray under torchrun: every rank would run the whole Ray eval on the same --out
    assert "under torchrun" in _err(lambda: apply_scale_out(_ns(out=str(tmp_path / "t.jsonl"), ray=True)))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    a = _ns(out=str(tmp_path / "t.jsonl"), ray=True)
    apply_scale_out(a)  # WORLD_SIZE=1 (torchrun --nproc-per-node 1, or a launcher that always sets it) is one process
    assert a.shard_spec is None and a.ray_workers == 1
    a = _ns(out=str(tmp_path / "t.jsonl"))
    apply_scale_out(a)
    assert a.shard_spec is None and a.out == str(tmp_path / "t.jsonl")


def test_cli_shard_errors_are_one_line_before_the_model_loads(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for argv, want in (
        (["eval", "--shard", "3/3", "--out", str(tmp_path / "o.jsonl")], "0 <= I < N"),
        (["eval", "--shard", "0/3"], "needs --out"),
        (["eval", "--shard", "0/3", "--out", str(tmp_path / "o.jsonl"), "--ray"], "do not combine"),
        (["eval", "--ray-address", "auto"], "--ray-address needs --ray"),
        (["merge", str(tmp_path / "m.jsonl"), str(tmp_path / "absent.jsonl")], "absent.jsonl: no such file"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffcls-fast: error: ") and want in err and err.count("\n") == 1, err


def test_an_empty_shard_says_so_and_loads_no_model(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import diffcls_fast.build as build

    monkeypatch.setattr(build, "build_classifier", lambda *a, **k: pytest.fail("an empty shard loaded the model"))
    out = tmp_path / "e.jsonl"
    assert main(["eval", "--limit", "2", "--shard", "2/3", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "shard 2/3 has no images: the run has 2 image(s), fewer than 3; nothing to do\n"
    assert (tmp_path / "e.shard-2-of-3.jsonl").read_text() == ""  # its part exists (a glob of all parts finds it)


def test_a_part_holding_another_shards_rows_is_refused(capsys, monkeypatch, tmp_path):
    import json

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    row = {"id": "digits/heldout/0", "config": "k", "correct": 1, "evaluations_spent": 5, "index": 0, "total": 12}
    for shard, argv_shard in (("0/3", "1/3"), (None, "0/3"), ("1/3", None)):
        part = tmp_path / (f"x.shard-{argv_shard.replace('/', '-of-')}.jsonl" if argv_shard else "x.jsonl")
        part.write_text(json.dumps({**row, "shard": shard}) + "\n")
        argv = ["eval", "--limit", "12", "--out", str(tmp_path / "x.jsonl")]
        assert main(argv + (["--shard", argv_shard] if argv_shard else [])) == 2
        err = capsys.readouterr().err
        assert "every shard needs its own --out part" in err and err.count("\n") == 1, err
