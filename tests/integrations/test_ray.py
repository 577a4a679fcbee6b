"""Ray Data on a local 2-CPU instance: classify_dataset and eval --ray give a single process's results, also after an
actor is killed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if not os.environ.get("CI"):  # CI installs the [test] extra, ray included: there a missing ray fails the run
    pytest.importorskip("ray")
import ray

from diffcls_fast import DiffusionClassifier, UserError
from diffcls_fast.cli import main
from diffcls_fast.evaluate import load_eval_split
from diffcls_fast.integrations.ray import KILL_ONCE_ENV, RESULT_COLUMNS, classify_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("digit-*.png"))
SAME = (
    "id",
    "index",
    "total",
    "config",
    "settings",
    "true_label",
    "correct",
    "p_true",
    "confidence",
    "label",
    "label_index",
    "top",
    "mean_errors",
    "n_scores",
    "evaluations",
    "error",
    "policy",
)
SAME += ("backend", "device", "dtype", "kernels")


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One Ray instance for the module (start-up costs seconds). Its workers inherit the kill switch's path."""
    marker = tmp_path_factory.mktemp("ray") / "kill-once"
    os.environ[KILL_ONCE_ENV] = str(marker)  # inert until a test creates the file
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield marker, ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.pop(KILL_ONCE_ENV, None)


@pytest.fixture(scope="module")
def local():
    return DiffusionClassifier("digits", "halving", seed=0)


def _same_as_local(rows, want):
    assert len(rows) == len(want)
    for row, r in zip(rows, want):
        assert row["label"] == r.label and row["label_name"] == r.label_name
        assert row["evaluations"] == r.evaluations and row["error"] is None
        assert np.array_equal(row["mean_errors"], r.mean_errors, equal_nan=True)  # bit for bit
        assert np.array_equal(row["n_scores"], r.n_scores) and np.array_equal(row["probabilities"], r.probabilities)
        assert list(row["top_classes"]) == [n for n, _ in r.top(5)] and list(row["top_probabilities"]) == [
            p for _, p in r.top(5)
        ]


def test_classify_dataset_on_two_actors_equals_one_process(ray_local, local):
    ds = ray.data.from_items([{"name": p.name, "image": p.read_bytes()} for p in EXAMPLES])  # encoded files
    out = classify_dataset(ds, "digits", policy="halving", concurrency=2, batch_size=2, seed=0)
    rows = sorted(out.take_all(), key=lambda r: r["name"])
    assert set(rows[0]) == {"name", *RESULT_COLUMNS}  # the image column is dropped, the others pass through
    assert [r["name"] for r in rows] == [p.name for p in EXAMPLES]
    _same_as_local(rows, local.classify(EXAMPLES))


def test_killed_actor_is_restarted_and_the_output_is_complete(ray_local, local):
    marker, _ = ray_local
    images, _, _, _ = load_eval_split("digits", "heldout")
    arrays = [np.asarray(im) for im in images[:8]]  # HW uint8, as ray.data.read_images gives
    ds = ray.data.from_items([{"i": i, "image": a} for i, a in enumerate(arrays)], override_num_blocks=4)
    marker.touch()  # the first batch's actor kills itself (SIGKILL) and removes the file
    out = classify_dataset(
        ds, "digits", policy="halving", concurrency=2, batch_size=2, seed=0, max_restarts=2, max_task_retries=2
    )
    rows = sorted(out.take_all(), key=lambda r: r["i"])
    assert not marker.exists(), "no actor was killed"
    assert [r["i"] for r in rows] == list(range(8))  # complete, and each image once
    _same_as_local(rows, local.classify(arrays))


def test_bad_options_fail_in_the_driver(ray_local):
    ds = ray.data.from_items([{"image": str(EXAMPLES[0])}])
    for kw, want in (
        ({"concurrency": 0}, "concurrency"),
        ({"max_restarts": -2}, "max_restarts"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"denoiser_batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(UserError, match=want):
            classify_dataset(ds, "digits", **kw)
    with pytest.raises(TypeError, match="unknown option\\(s\\): n_grids"):
        classify_dataset(ds, "digits", n_grids=5)
    # found in the actor: Ray raises its own RayTaskError, holding the one-line message
    with pytest.raises(
        ray.exceptions.RayTaskError,
        match="input column\\(s\\) 'label' would be overwritten by the results; rename them first",
    ):
        classify_dataset(
            ray.data.from_items([{"image": str(EXAMPLES[0]), "label": 3}]), "digits", policy="halving"
        ).take_all()


def test_eval_ray_writes_a_local_evals_rows_and_resumes(ray_local, tmp_path, capsys):
    _, address = ray_local
    args = ["eval", "--policy", "halving", "--no-cache", "--json"]
    want = tmp_path / "local.jsonl"
    assert main([*args, "--limit", "6", "--out", str(want)]) == 0
    local_summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    got = tmp_path / "ray.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ray_args = [*args, "--out", str(got), "--ray", "--ray-address", address, "--ray-workers", "2"]
    # a driver of its own joins the cluster, then this process (Ray already up) resumes its 4 rows
    p = subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *ray_args, "--limit", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert main([*ray_args, "--limit", "6"]) == 0
    assert p.stdout.count("\n") == 1, p.stdout  # --json: the summary is the only (so the last) line, nothing of Ray's
    runs = [json.loads(p.stdout), json.loads(capsys.readouterr().out.splitlines()[-1])]
    assert runs[0]["images"] == 4 and runs[1]["resumed"] == 4 and runs[1]["images"] == 6
    for k in ("accuracy", "evals_per_image", "failed", "policy", "backend", "kernels", "dtype", "model"):
        assert runs[1][k] == local_summary[k], k

    def rows(path, leave_out=None):
        return {
            r["id"]: {k: r[k] for k in SAME if k != leave_out} for r in map(json.loads, path.read_text().splitlines())
        }

    lines = got.read_text().splitlines()
    assert len(lines) == 6  # none twice
    assert [json.loads(x)["total"] for x in lines] == [4] * 4 + [6] * 2  # each row says how large its run was
    assert rows(got, "total") == rows(want, "total")  # same schema, same config key, same numbers bit for bit


def test_eval_ray_on_an_image_folder(ray_local, tmp_path, capsys):
    _, address = ray_local
    names = {"0": "zero", "3": "three", "4": "four", "7": "seven", "9": "nine"}
    for p in EXAMPLES:
        (tmp_path / "data" / names[p.stem[-1]]).mkdir(parents=True)
        (tmp_path / "data" / names[p.stem[-1]] / p.name).write_bytes(p.read_bytes())
    args = ["eval", "--data", str(tmp_path / "data"), "--policy", "halving", "--no-cache", "--json"]
    assert main([*args, "--out", str(tmp_path / "local.jsonl")]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "ray.jsonl"), "--ray", "--ray-address", address, "--ray-workers", "2"])
        == 0
    )
    capsys.readouterr()

    def rows(path):
        return {r["id"]: {k: r[k] for k in SAME} for r in map(json.loads, path.read_text().splitlines())}

    assert len(rows(tmp_path / "ray.jsonl")) == 5 and rows(tmp_path / "ray.jsonl") == rows(tmp_path / "local.jsonl")
    assert (
        main([*args, "--out", str(tmp_path / "ray.jsonl")]) == 0
    )  # a local eval resumes the Ray run: nothing left to do
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["resumed"] == 5
    (tmp_path / "data" / "four" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # found by an actor
    # a damaged file fails its own row (as in a local eval), the others are scored: exit 1, not an abort
    assert main([*args, "--out", str(tmp_path / "broken.jsonl"), "--ray", "--ray-address", address]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    assert (
        summary["images"] == 6
        and summary["failed"] == 1
        and "broken.png: not a readable image" in summary["first_error"]
    ), summary
    assert "1 of 6 images failed" in err
    broken = [
        r for r in map(json.loads, (tmp_path / "broken.jsonl").read_text().splitlines()) if r["id"] == "four/broken.png"
    ]
    assert len(broken) == 1 and "not a readable image" in broken[0]["error"] and broken[0]["correct"] == 0


def test_eval_ray_refuses_more_than_the_cluster_has(ray_local, capsys):
    _, address = ray_local
    for extra, want in (
        (["--ray-workers", "3"], "needs 3 CPUs; the Ray cluster has 2"),
        (["--ray-gpus", "1"], "needs 1 GPUs; the Ray cluster has 0"),
    ):
        assert main(["eval", "--limit", "1", "--ray", "--ray-address", address, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffcls-fast: error: ") and want in err and err.count("\n") == 1, err


class _FakeRay:
    def __init__(self, up):
        self.up, self.shutdowns = up, 0

    def is_initialized(self):
        return self.up

    def init(self):
        self.up = True

    def shutdown(self):
        self.up, self.shutdowns = False, self.shutdowns + 1


@pytest.mark.parametrize("already_up", [False, True])
def test_driver_output_sends_prints_to_stderr_and_leaves_only_a_ray_it_joined(monkeypatch, capsys, already_up):
    import diffcls_fast.integrations.ray as ray_mod

    fake = _FakeRay(already_up)
    monkeypatch.setattr(ray_mod, "require_ray", lambda: fake)
    with ray_mod.driver_output():
        fake.init()  # what RayClassifier does when Ray is not up
        print("(raylet) A worker died or was killed")  # what Ray's error thread prints, to sys.stdout
    print("summary")
    out, err = capsys.readouterr()
    assert out == "summary\n" and "worker died" in err
    assert fake.shutdowns == (0 if already_up else 1) and fake.up == already_up


def test_driver_output_restores_stdout_when_the_run_fails(monkeypatch, capsys):
    import diffcls_fast.integrations.ray as ray_mod

    fake = _FakeRay(False)
    monkeypatch.setattr(ray_mod, "require_ray", lambda: fake)
    with pytest.raises(UserError), ray_mod.driver_output():
        fake.init()
        raise UserError("bad")
    print("after")
    assert capsys.readouterr().out == "after\n" and fake.shutdowns == 1
