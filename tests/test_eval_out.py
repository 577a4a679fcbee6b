"""eval --out: the file is checked, locked and parsed before any work; the settings key covers every number in a row."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffcls_fast import UserError
from diffcls_fast.engine import ClassSpec
from diffcls_fast.engine.policies import PolicyConfig
from diffcls_fast.evaluate import OutFile, config_key, eval_settings


def _row(i, config="k1", **extra):
    return {
        "id": f"digits/heldout/{i}",
        "config": config,
        "true_label": 1,
        "correct": 1,
        "evaluations_spent": 50,
        **extra,
    }


def _write_rows(path, rows, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def _err(fn):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_folder_missing_parent_and_parent_file(tmp_path):
    assert "is a folder" in _err(lambda: OutFile(tmp_path))
    assert f"no such folder {tmp_path / 'nope'}" in _err(lambda: OutFile(tmp_path / "nope" / "out.jsonl"))
    (tmp_path / "f").write_text("x")
    assert "is not a folder" in _err(lambda: OutFile(tmp_path / "f" / "out.jsonl"))


def test_unwritable_place_and_not_a_file(tmp_path):
    assert "cannot write" in _err(lambda: OutFile("/proc/diffcls-out.jsonl"))  # not writable, even for root
    assert "not a regular file" in _err(lambda: OutFile("/dev/null"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _err(lambda: OutFile(fifo))  # without a reader, opening it would block


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_real_chmod(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert "cannot write (Permission denied)" in _err(lambda: OutFile(d / "out.jsonl"))
    finally:
        d.chmod(0o755)


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b'{"config": "k1", "correct": 1, "evaluations_spent": 5}', "'id' is missing"),
        (b"[1, 2, 3]", "a JSON list, not an eval row"),
        (b'"just a string"', "a JSON str, not an eval row"),
        (b'{"id": 7, "config": "k1", "correct": 1, "evaluations_spent": 5}', "'id' is int 7"),
        (b'{"id": "a", "config": "k1", "correct": true, "evaluations_spent": 5}', "'correct' is bool"),
        (b'{"id": "a", "config": "k1", "correct": 1}', "'evaluations_spent' is missing"),
        (b"\xff\xfe\x00not utf-8", "not UTF-8"),
        (b"{not json", "not a JSON line"),
    ],
)
def test_malformed_row_is_one_line_with_file_and_line(tmp_path, line, fragment):
    p = tmp_path / "out.jsonl"
    p.write_bytes(json.dumps(_row(0)).encode() + b"\n\n" + line + b"\n" + json.dumps(_row(1)).encode() + b"\n")
    msg = _err(lambda: OutFile(p))
    assert msg.startswith(f"{p}:3: ") and fragment in msg, msg
    with pytest.raises(UserError, match=":3: "):
        OutFile(p)  # the same answer again: the failed open released its lock


def test_torn_last_line_is_cut_and_rows_kept(tmp_path):
    p = tmp_path / "out.jsonl"
    _write_rows(p, [_row(0), _row(1)], tail=b'{"id": "digits/heldout/2", "conf')
    out = OutFile(p)
    try:
        assert sorted(out.rows) == ["digits/heldout/0", "digits/heldout/1"]
        assert p.read_bytes().endswith(b"}\n")
        out.append(_row(2))
    finally:
        out.close()
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == [f"digits/heldout/{i}" for i in range(3)]


def test_rows_with_other_settings_are_refused_with_the_difference(tmp_path):
    p = tmp_path / "out.jsonl"
    old = {"format": 2, "dtype": "float32", "temperature": 0.01, "model": "m1"}
    new = {**old, "dtype": "bfloat16", "temperature": 0.5}
    _write_rows(p, [_row(0, config=config_key(old), settings=old)])
    out = OutFile(p)
    try:
        msg = _err(lambda: out.done(config_key(new), new))
        assert (
            f"{p}:1: written with different settings" in msg
            and "dtype 'float32' -> 'bfloat16'" in msg
            and "temperature 0.01 -> 0.5" in msg
        ), msg
        assert list(out.done(config_key(old), old)) == ["digits/heldout/0"]
    finally:
        out.close()


def test_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    p = tmp_path / "out.jsonl"
    first = OutFile(p)
    try:
        assert "is being written by another eval" in _err(lambda: OutFile(p))
    finally:
        first.close()
    OutFile(p).close()  # released on close


def test_second_writer_names_the_holders_pid(tmp_path):
    p = tmp_path / "out.jsonl"
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); fcntl.flock(fd,"
        " fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(p)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        msg = _err(lambda: OutFile(p))
        assert "being written by another eval" in msg
        if os.path.exists("/proc/locks"):
            assert f"(pid {holder.pid})" in msg, msg
    finally:
        holder.kill()
        holder.wait()
    OutFile(p).close()  # a killed holder's lock is gone


def _fake_clf(**over):
    base = dict(
        model=SimpleNamespace(fingerprint="w1", dtype=torch.float32),
        loss="l2",
        policy_cfg=PolicyConfig(name="exhaustive", n_grid=5),
        seed=0,
        temperature=0.01,
        posterior_floor=0.0,
        bank=SimpleNamespace(saved=None),
    )
    base.update(over)
    return SimpleNamespace(**base)


def test_settings_key_covers_every_number_in_a_row(tmp_path):
    spec = ClassSpec.from_names(["zero", "one"], "digit {}")
    ids, labels, images = ["a", "b", "c"], np.array([0, 1, 0]), [None, None, None]

    def key(clf=None, spec=spec, ids=ids, labels=labels, images=images):
        return config_key(eval_settings(clf or _fake_clf(), spec, ids, labels, images))

    k0 = key()
    assert key() == k0  # deterministic
    noise = torch.randn(3, 1, 8, 8)
    variants = {
        "weights": key(_fake_clf(model=SimpleNamespace(fingerprint="w2", dtype=torch.float32))),
        "dtype": key(_fake_clf(model=SimpleNamespace(fingerprint="w1", dtype=torch.bfloat16))),
        "loss": key(_fake_clf(loss="x0")),
        "policy": key(_fake_clf(policy_cfg=PolicyConfig(name="ttest"))),
        "policy option": key(_fake_clf(policy_cfg=PolicyConfig(name="exhaustive", n_grid=6))),
        "seed": key(_fake_clf(seed=1)),
        "noise": key(_fake_clf(bank=SimpleNamespace(saved=noise))),
        "noise content": key(_fake_clf(bank=SimpleNamespace(saved=noise + 1))),
        "temperature": key(_fake_clf(temperature=0.02)),
        "posterior floor": key(_fake_clf(posterior_floor=0.01)),
        "class names": key(spec=ClassSpec.from_names(["zero", "uno"], "digit {}")),
        "prompts": key(spec=ClassSpec.from_names(["zero", "one"], "the number {}")),
        "ids": key(ids=["a", "b", "d"]),
        "labels": key(labels=np.array([0, 1, 1])),
    }
    for what, k in variants.items():
        assert k != k0, what
    assert len(set(variants.values())) == len(variants)
    f = tmp_path / "img.png"
    f.write_bytes(b"123")
    k_file = key(images=[f, None, None])
    f.write_bytes(b"1234")  # same path, other content (size)
    assert key(images=[f, None, None]) != k_file


def _eval_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", "eval", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_eval_data_folder_damaged_file_fails_its_row_and_the_run_finishes(tmp_path):
    """Regression: a truncated image in --data aborted the eval after the model had loaded, at the same
    file on every rerun, so the run could never finish. Now that image fails (a row with its error),
    the others are scored, and a rerun resumes past it. Hidden folders and files are not data."""
    from PIL import Image

    root = tmp_path / "data"
    for name in ("seven", "three"):
        (root / name).mkdir(parents=True)
    src = {7: "examples/digit-7.png", 3: "examples/digit-3.png"}
    for k, name in ((7, "seven"), (3, "three")):
        Image.open(src[k]).save(root / name / "a.png")
    (root / "three" / "b.png").write_bytes(open(src[3], "rb").read()[:40])  # truncated
    (root / ".ipynb_checkpoints").mkdir()
    Image.open(src[7]).save(root / ".ipynb_checkpoints" / "c.png")
    Image.open(src[7]).save(root / "seven" / ".hidden.png")
    out = tmp_path / "r.jsonl"
    args = ["--data", str(root), "--policy", "halving", "--out", str(out), "--json", "--no-cache"]
    r = _eval_cli(*args)
    assert r.returncode == 1, r.stderr  # an image failed; the others are answered
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["images"] == 3 and summary["failed"] == 1, summary
    # one rule for every metric: the failed image is wrong with the uniform posterior (1/2: two classes here)
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["nll"] >= np.log(2) / 3, summary
    assert "uniform posterior" in r.stderr
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == ["seven/a.png", "three/a.png", "three/b.png"]
    assert rows["three/b.png"]["error"] and "it was not scored" in rows["three/b.png"]["error"]
    assert rows["seven/a.png"]["correct"] == 1 and rows["three/a.png"]["correct"] == 1
    again = _eval_cli(*args)  # resumes: nothing left to score
    resumed = json.loads(again.stdout.splitlines()[-1])
    assert again.returncode == 1 and resumed["images"] == 3 and resumed["scored"] == 0
    assert resumed["nll"] == summary["nll"] and resumed["accuracy"] == summary["accuracy"]
    assert resumed["batch_fill"] is None and resumed["evals_per_second"] is None  # no speed measured: none shown
    assert len(out.read_text().splitlines()) == 3
