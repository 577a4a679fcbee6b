"""The GPU suite's CPU-checkable parts: FLOP counts, the tests section's outcomes, kill-at-budget, the result file
and its docs table, an end-to-end ``python -m bench.gpu --quick`` on the CPU, and a dry run of the CUDA branches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest

import bench.gpu as gpu
import bench.gpu_measure as gm
from bench.gpu_measure import finalize, read_records, record
from bench.report import _latest_gpu, render_gpu

ROOT = Path(__file__).resolve().parents[2]


def test_preset_flops_match_the_papers():
    dit = gm.preset_flops("dit-xl-2-256", 1)
    assert abs(dit / 2 - 118.6e9) / 118.6e9 < 0.01  # DiT paper, Table 4: 118.6 Gflops (multiply-adds), DiT-XL/2 256 px
    sd1, sd2 = gm.preset_flops("sd2-base", 1), gm.preset_flops("sd2-base", 2)
    assert sd2 == 2 * sd1 and 7e11 < sd1 < 9e11  # ~0.8 TFLOP per 64x64-latent UNet call, linear in batch


def test_tests_section_records_each_outcome(tmp_path):
    """Each outcome is recorded as pytest reports it, so a section killed mid-run still says what ran."""
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_three.py").write_text(
        textwrap.dedent("""
            import pytest
            def test_ok(): pass
            def test_bad(): assert 1 == 2
            @pytest.mark.skip(reason="no CUDA here")
            def test_gpu(): pass
            """)
    )
    base = tmp_path / "gpu_t"
    run = f"""
import functools, time, bench.gpu as g
g.TESTS = {str(tests)!r}
rec = functools.partial(g.record, {str(base)!r} + "_records.jsonl", "tests")
print(g.section_tests(rec, g.Ctx(g.FULL | {{"tests_marker": "not cuda"}}, time.time() + 60, {str(base)!r})))
"""
    p = subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=300)
    records = read_records(f"{base}_records.jsonl")
    assert p.stdout.strip().splitlines()[-1] == "failed: pytest exit code 1", p.stdout[-2000:] + p.stderr[-2000:]
    t = finalize(records, {}, {})["tests"]
    assert t["counts"] == {"failed": 1, "passed": 1, "skipped": 1} and t["rc"] == 1
    assert [n.split("::")[-1] for n in t["failures"]] == ["test_bad"] and t["skip_reasons"] == ["Skipped: no CUDA here"]
    assert t["summary"] == "1 failed, 1 passed, 1 skipped" and (base.parent / "gpu_t_pytest.xml").is_file()
    cut = finalize([r for r in records if r["kind"] != "tests"], {}, {})["tests"]  # killed before pytest finished
    assert cut["summary"].startswith("cut off after") and cut["rc"] is None


def test_a_child_is_killed_at_its_budget(tmp_path):
    t0 = time.time()
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    rc, killed = gpu.stream(cmd, 3, str(tmp_path / "gpu_t"))
    assert killed and rc is not None and time.time() - t0 < 20
    assert "started" in (tmp_path / "gpu_t.log").read_text()


def test_read_records_skips_a_torn_line(tmp_path):
    record(tmp_path / "r.jsonl", "kernels", "ceiling", name="copy", value=4000.0, unit="GB/s", detail="x")
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"section": "kernels", "kind": "cei')  # a kill in the middle of a write
    assert [r["kind"] for r in read_records(tmp_path / "r.jsonl")] == ["ceiling"]


def _synthetic(tmp_path: Path, date: str = "2026-12-02") -> dict:
    """A result file from records written through the suite's own ``record``, with round numbers."""
    sections = ("env", "kernels", "denoisers", "engine", "tests")
    env, ker, den, eng, tst = (partial(record, tmp_path / "records.jsonl", s) for s in sections)
    env("not_run", what="TensorRT", reason="not installable on the device")
    ker("ceiling", name="copy", value=4300.0, unit="GB/s", detail="1 GiB copy")
    ker("ceiling", name="matmul_bf16", value=790.0, unit="TFLOP/s", detail="8192^3")
    kernel = dict(latent="sd", shape=[4, 64, 64], dtype="float16", max_abs_diff=0.0)
    ker("kernel", op="make_noisy", Q=256, fused_ms=0.01, eager_ms=0.05, nbytes=256 * 16384 * 10, **kernel)  # 4,194 GB/s
    ker("kernel", op="query_errors", Q=64, fused_ms=0.004, eager_ms=0.01, nbytes=64 * 16384 * 6, **kernel)  # 1,573 GB/s
    for i in range(151):
        tst("test", id=f"tests/t.py::test_{i}", outcome="skipped" if i == 150 else "passed", reason=None)
    tst("tests", marker="cuda", rc=0)
    sd2 = dict(model="preset:sd2-base", dtype="float16")
    for b, ms in ((64, 150.0), (256, 500.0)):
        den("flops", model="preset:sd2-base", batch=b, flops=804.26e9 * b, where="meta")
        den("denoiser", variant="eager-sdpa", batch=b, ms=ms, calls=3, **sd2)
    den("denoiser", variant="compile-cudagraphs", batch=64, ms=100.0, compile_s=80.0, **sd2)
    den("step", batch=64, kernels="fused", step_ms=152.0, denoise_ms=150.0, **sd2)
    run = dict(model="preset:sd2-base", images=2, evals=5500, labels=[3, 7], warmup_s=1.0, schedule="cifar10")
    eng("engine", system="reference", policy="adaptive 50 500 / 5 1", seconds=12.0, batch_size=32, **run)
    eng("engine", system="engine", policy="adaptive(...)", seconds=10.0, batch_size=256, **run)
    eng("engine", system="engine-sequential", policy="adaptive(...)", seconds=11.0, batch_size=256, **run)
    eng("bare", batch=256, ms=460.0, **sd2)
    eng("slice", model="preset:sd2-base", schedule="imagenet", classes=1000, policy="[4]", evals=4000, seconds=8.0)
    meta = {"date": date, "device": "NVIDIA H200", "cuda_available": True, "torch": "2.11.0", "commit": "abc1234"}
    meta["quick"] = False
    sections = {"kernels": {"status": "ok"}, "compile": {"status": "partial: killed at its budget of 110 s"}}
    return finalize(read_records(tmp_path / "records.jsonl"), meta, sections)


def test_finalize_derives_the_figures_and_checks_the_targets(tmp_path):
    p = _synthetic(tmp_path)
    d64 = next(d for d in p["denoisers"] if d["variant"] == "eager-sdpa" and d["batch"] == 64)
    assert d64["evals_per_s"] == pytest.approx(64 / 0.15, rel=1e-3)
    assert d64["achieved_tflops"] == pytest.approx(804.26e9 * 64 / 0.15 / 1e12, rel=1e-3)
    assert d64["mfu_vs_matmul"] == pytest.approx(804.26e9 * 64 / 0.15 / 790e12, abs=1e-3)
    assert d64["mfu_vs_spec"] == pytest.approx(804.26e9 * 64 / 0.15 / 989.5e12, abs=1e-3)
    assert p["kernels"][0]["fused_GBps"] == pytest.approx(4194.3, abs=0.1) and p["kernels"][0]["speedup"] == 5.0
    assert p["steps"][0]["kernel_share"] == pytest.approx(2 / 152, abs=1e-4)
    assert p["tests"]["summary"] == "150 passed, 1 skipped" and p["tests"]["marker"] == "cuda"
    t = {g["target"]: g for g in p["targets"]}
    assert t["mfu"]["met"] is True and "compile-cudagraphs" in t["mfu"]["detail"]  # 515 TFLOP/s = 0.65 of the matmul
    bw = t["kernel_bandwidth"]
    assert bw["value"] == pytest.approx(1573 / 4300, abs=2e-3) and bw["met"] is False
    assert t["engine_vs_reference"]["value"] == pytest.approx(1.2) and t["engine_vs_reference"]["met"] is False
    assert t["engine_overhead"]["value"] == pytest.approx(10.0 / (0.46 * 5500 / 256) - 1, abs=1e-3)
    assert t["engine_overhead"]["met"] is True and p["engine"]["labels_agree"] == "2/2"  # 1.2%
    assert p["engine"]["overlap_speedup"] == pytest.approx(1.1) and p["engine"]["overlap_labels_agree"] == "2/2"
    img = {r["schedule"]: r for r in p["per_image"] if r["system"] == "engine"}
    assert img["Li et al. CIFAR-10"]["seconds_per_image"] == 5.0
    assert img["Li et al. ImageNet"]["evals_per_image"] == 124500
    assert img["Li et al. ImageNet"]["seconds_per_image"] == pytest.approx(124500 / 500)
    assert "extrapolated" in img["Li et al. ImageNet"]["how"]


def test_readme_gpu_table_renders_the_written_file(tmp_path):
    p = _synthetic(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / "gpu_h200_2026-12-02.json").write_text(json.dumps(p))
    cpu = {**p, "cuda_available": False, "date": "2026-12-03"}  # a CPU smoke run: never rendered
    (results / "gpu_cpu_2026-12-03.json").write_text(json.dumps(cpu))
    latest = _latest_gpu(results)
    assert latest["_file"] == "gpu_h200_2026-12-02.json"
    md = "\n".join(render_gpu(latest, latest["_file"]))
    assert "**GPU: NVIDIA H200**" in md and "[json](../bench/results/gpu_h200_2026-12-02.json)" in md
    assert "| preset:sd2-base | compile-cudagraphs | float16 | 64 | 100.0 | 640 | 515 | 0.65 | 0.52 | 80 |" in md
    assert "| make_noisy | float16 | 256 | 4194 |" in md
    assert "the overlap (batch k+1 prepared while batch k runs) 1.10x evals/s" in md
    assert "**1.20x**" in md and "| Li et al. ImageNet | engine | preset:sd2-base | 124500 | 249.00 |" in md
    assert "Not run: TensorRT (not installable on the device)." in md
    assert "compile: partial: killed at its budget of 110 s" in md


@pytest.mark.slow
def test_gpu_suite_runs_on_the_cpu(tmp_path):
    """``python -m bench.gpu --quick`` without CUDA: each section that has a CPU part runs it and records what it
    measured (a section that breaks fails this test), and the CUDA-only parts say that they were skipped."""
    cmd = [sys.executable, "-m", "bench.gpu", "--quick", "--budget-scale", "3", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in tmp_path.iterdir())
    assert len(files) <= 8 and {f.split(".")[-1] for f in files} >= {"json", "log", "jsonl", "xml", "txt"}
    res = json.loads(next(tmp_path.glob("gpu_*[0-9].json")).read_text())
    log = (tmp_path / files[0]).with_suffix(".log").read_text()
    assert res["benchmark"] == "gpu" and res["cuda_available"] is False and not res["errors"], log[-3000:]
    st = {k: v["status"] for k, v in res["sections"].items()}
    assert st["kernels"].startswith(gpu.NO_CUDA) and st["denoisers"].startswith(gpu.NO_CUDA), st
    assert st["tests"] == "ok" and st["compile"] == "skipped: not in --quick", st
    assert st["engine"] == "ok" and st["profile"] == "ok", st
    assert res["ceilings"]["copy_GBps"] > 0 and res["ceilings"]["matmul_bf16_tflops"] > 0
    assert {f["model"] for f in res["flops"]} >= {"preset:sd2-base", "preset:sd15", "preset:dit-xl-2-256", "digits"}
    assert {(d["model"], d["batch"]) for d in res["denoisers"]} == {("digits", 8), ("digits", 64)}
    assert all(d["ms"] > 0 and d["flops_per_call"] > 0 and d["achieved_tflops"] is not None for d in res["denoisers"])
    assert [s["kernels"] for s in res["steps"]] == ["reference"]
    assert res["tests"]["counts"].get("passed", 0) == 0 and res["tests"]["counts"]["skipped"] > 0  # no CUDA here
    e = res["engine"]
    assert e["reference"]["model"] == "digits" and e["same_work"] and e["labels_agree"] == "1/1"
    assert e["overhead_vs_bare"] is not None and any(r["how"].startswith("extrapolated") for r in res["per_image"])
    assert {pr["target"] for pr in res["profiles"]} == {"mfu", "engine_overhead", "kernel_bandwidth"}
    assert {n["what"] for n in res["not_run"]} >= {"ONNX Runtime CUDA", "TensorRT"}
    assert all(t["met"] is None for t in res["targets"])  # the GPU targets are not measured on a CPU
    assert "**GPU: " in p.stdout and "section kernels: skipped: no CUDA device" in p.stdout


@pytest.mark.slow
def test_cuda_code_paths_dry_run_on_cpu(tmp_path, monkeypatch):
    """Every CUDA branch of the sections (but the CUDA tests), on CPU tensors at toy sizes: Triton under the
    interpreter, the digits model in place of the presets, ``torch.compile`` replaced by the identity. It catches
    errors in the glue (arguments, shapes, record fields) that would otherwise first show on the GPU; its timings
    and FLOPs mean nothing, and the real CUDA calls (do_bench, CUDA graphs, compiled kernels) do not run."""
    pytest.importorskip("triton")
    import torch

    import diffcls_fast

    real_load = diffcls_fast.load_model

    def digits(name, device=None, dtype=None):  # in place of every preset
        return real_load("digits", device="cpu", dtype=dtype)

    monkeypatch.setattr(gpu, "load_model", digits)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)
    monkeypatch.setattr(gm, "preset_flops", lambda name, b: 1e9 * b)
    fp16 = torch.float16
    small = gpu.FULL | dict(
        ceilings=(1 << 20, 64),
        kernel_cases={"sd": ((4, 8, 8), [64]), "digits": ((1, 8, 8), [8])},
        kernel_dtypes=[fp16],
        presets=["sd2-base"],
        batches=[8],
        step_batches=[8],
        variants=[("eager-sdpa", fp16), ("eager-xformers", fp16)],
        engine_batch=32,
        engine_schedule=dict(n_samples=[3, 6], to_keep=[2, 1]),
        imagenet_slice=(10, 2),
        compile_batches=[8],
        grid=2,
        profile_kernels=(16, (4, 8, 8)),
    )
    base = str(tmp_path / "gpu_t")
    missed = ("mfu", "engine_overhead", "kernel_bandwidth")
    ctx = gpu.Ctx(small, time.time() + 600, base, missed, cuda=True)
    names = [n for n in gpu.PLAN if n != "tests"]
    status = {n: getattr(gpu, f"section_{n}")(partial(record, f"{base}_records.jsonl", n), ctx) for n in names}
    assert status == dict.fromkeys(names, "ok"), status
    p = finalize(read_records(f"{base}_records.jsonl"), {"device": "cpu", "date": "2026-12-01"}, {})
    ops = {(op, latent) for op in ("make_noisy", "query_errors") for latent in ("sd", "digits")}
    assert {(k["op"], k["latent"]) for k in p["kernels"]} == ops
    assert all(k["fused_ms"] > 0 and k["max_abs_diff"] < 2e-3 for k in p["kernels"])  # fused vs torch, as measured
    assert {d["variant"] for d in p["denoisers"]} == {"eager-sdpa", "compile-cudagraphs", "compile-default"}
    assert all(d["flops_per_call"] for d in p["denoisers"])  # no xformers row: not installed, or fails on CPU tensors
    assert all(d["rel_diff_vs_eager"] < 1e-3 for d in p["denoisers"] if d["compile_s"] is not None)
    assert {s["kernels"] for s in p["steps"]} == {"fused", "reference"}
    e = p["engine"]
    assert e["labels_agree"] == "2/2" and e["same_work"] and e["overhead_vs_bare"] is not None
    assert any(r["how"].startswith("extrapolated") for r in p["per_image"])
    assert {pr["target"] for pr in p["profiles"]} == {"mfu", "engine_overhead", "kernel_bandwidth"}
    assert "== mfu:" in Path(f"{base}_profile.txt").read_text()
