"""The GPU suite's CPU-checkable parts: agreement rule, FLOP counts, pytest parsing, kill-at-budget,
the result file and its README table, and an end-to-end ``python -m bench.gpu --quick`` on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bench.agreement import DTYPE_RTOL, compare_results, compare_runs
from bench.gpu import Runner, parse_pytest
from bench.gpu_schema import Recorder, finalize, read_records, summary_lines, write_payload
from bench.report import _latest_gpu, render_gpu

ROOT = Path(__file__).resolve().parents[1]


# -- the agreement rule ----------------------------------------------------------------------------
def test_agreement_labels_and_errors():
    a = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.001, 5.0])]
    same = compare_runs([0, 0], a, [0, 0], [x * (1 + 1e-3) for x in a], rtol=1e-2)
    assert same.ok and same.same_labels == 2 and 9e-4 < same.max_rel_error_diff < 1.1e-3
    # image 1 is a near-tie (0.1% apart, under 2 x rtol): its flip is allowed and reported
    flip = compare_runs([0, 0], a, [0, 1], [a[0], np.array([1.0005, 1.0, 5.0])], rtol=1e-2)
    assert flip.ok and flip.tie_flips == [1] and flip.same_labels == 1
    # a clear decision that flips is a failure, as are errors out of tolerance
    bad = compare_runs([0, 0], a, [2, 0], [np.array([3.0, 2.0, 1.0]), a[1]], rtol=1e-2)
    assert not bad.ok and bad.confident_mismatches == [0] and bad.error_mismatches == [0]
    assert "CONFIDENT LABEL MISMATCHES" in bad.describe()
    # NaN in one run only (a class scored in one run and not in the other) is a mismatch
    nan = compare_runs([0], [np.array([1.0, np.nan])], [0], [np.array([1.0, 2.0])], rtol=1e-2)
    assert nan.error_mismatches == [0]
    # without errors, any label difference counts
    assert compare_runs([1, 2], None, [1, 3], None, rtol=1e-2).confident_mismatches == [1]
    with pytest.raises(ValueError):
        compare_runs([1], None, [1, 2], None, rtol=1e-2)


def test_agreement_digits_bf16_vs_fp32_on_cpu():
    """The tolerance the CUDA tests use for bf16 holds between bf16 and fp32 on the CPU."""
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.data.digits import load_split

    pil = load_split("heldout")[0][:6]
    runs = {dt: DiffusionClassifier(load_model("digits", device="cpu", dtype=dt), "exhaustive", n_grid=3, use_cache=False).classify(pil) for dt in ("fp32", "bf16")}
    ag = compare_results(runs["fp32"], runs["bf16"], rtol=DTYPE_RTOL["bfloat16"])
    assert ag.ok, ag.describe()
    assert ag.max_rel_error_diff > 0  # bf16 really ran: the errors differ
    assert not compare_results(runs["fp32"], runs["bf16"], rtol=1e-7).ok  # and a too-tight tolerance would catch it


# -- FLOPs ------------------------------------------------------------------------------------------
def test_preset_flops_match_the_papers():
    from bench.gpu_measure import preset_flops

    dit = preset_flops("dit-xl-2-256", 1)
    assert abs(dit / 2 - 118.6e9) / 118.6e9 < 0.01  # DiT paper, Table 4: 118.6 Gflops (multiply-adds) for DiT-XL/2 at 256 px
    sd1, sd2 = preset_flops("sd2-base", 1), preset_flops("sd2-base", 2)
    assert sd2 == 2 * sd1 and 7e11 < sd1 < 9e11  # ~0.8 TFLOP per 64x64-latent UNet call, linear in batch


# -- orchestration ----------------------------------------------------------------------------------
def test_parse_pytest_output_of_a_real_run(tmp_path):
    f = tmp_path / "test_three.py"
    f.write_text(
        textwrap.dedent(
            """
            import pytest
            def test_ok(): pass
            def test_bad(): assert 1 == 2
            @pytest.mark.skip(reason="no CUDA here")
            def test_gpu(): pass
            """
        )
    )
    p = subprocess.run([sys.executable, "-m", "pytest", "-v", "-ra", "-p", "no:cacheprovider", str(f)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    res = parse_pytest(p.stdout.splitlines())
    assert res["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [n.split("::")[-1] for n in res["failures"]] == ["test_bad"]
    assert "1 failed, 1 passed, 1 skipped" in res["summary"]
    assert any("no CUDA here" in r for r in res["skip_reasons"])
    cut = parse_pytest(p.stdout.splitlines()[:-6])  # killed before the summary: counts from the streamed lines
    assert cut["summary"].startswith("cut off after")


def test_stream_kills_a_child_at_its_budget(tmp_path):
    r = Runner(tmp_path, "gpu_test", quick=True, budget=60)
    seen = []
    t0 = time.time()
    rc, timed_out, secs = r.stream("sleep", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], budget=3, sink=seen.append)
    assert timed_out and rc is not None and time.time() - t0 < 20
    assert seen == ["started"] and "[sleep] started" in (tmp_path / "gpu_test.log").read_text()


def test_read_records_skips_a_torn_line(tmp_path):
    rec = Recorder(tmp_path / "r.jsonl", "kernels")
    rec.ceiling("copy", 4000.0, "GB/s", "x")
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write('{"section": "kernels", "kind": "cei')  # a kill in the middle of a write
    assert [r["kind"] for r in read_records(tmp_path / "r.jsonl")] == ["ceiling"]


# -- the result file and the README table, from synthetic records through the suite's own writer ---------
def _synthetic(tmp_path: Path, date: str = "2026-12-02") -> dict:
    rec_path = tmp_path / "records.jsonl"
    env, ker, den, eng, tst = (Recorder(rec_path, s) for s in ("env", "kernels", "denoisers", "engine", "tests"))
    env.not_run("TensorRT", "not installable on the device")
    ker.ceiling("copy", 4300.0, "GB/s", "1 GiB copy")
    ker.ceiling("matmul_bf16", 790.0, "TFLOP/s", "8192^3")
    ker.kernel("make_noisy", "sd", (4, 64, 64), "float16", 256, 0.01, 0.05, 256 * 16384 * 10, 0.0)  # 4,194 GB/s fused
    ker.kernel("query_errors", "sd", (4, 64, 64), "float16", 64, 0.004, 0.01, 64 * 16384 * 6, 1e-7)  # 1,573 GB/s fused
    tst.tests(marker="cuda", rc=0, timed_out=False, seconds=90.0, summary="150 passed, 1 skipped", counts={"passed": 150, "skipped": 1}, failures=[], skip_reasons=[])
    flops = 804.26e9
    for b, ms in ((64, 150.0), (256, 500.0)):
        den.flops("preset:sd2-base", b, flops * b, "meta")
        den.denoiser("preset:sd2-base", "eager-sdpa", "float16", b, {"ms": ms, "ms_min": ms, "ms_max": ms, "calls": 3, "warmup_s": 1.0}, None)
    den.denoiser("preset:sd2-base", "compile-cudagraphs", "float16", 64, {"ms": 100.0, "ms_min": 99.0, "ms_max": 101.0, "calls": 5, "warmup_s": 0.2}, None, compile_s=80.0)
    den.step("preset:sd2-base", "float16", 64, "fused", 152.0, 150.0)
    eng.engine("preset:sd2-base", "reference", "adaptive 50 500 / 5 1", 2, 5500, 12.0, [3, 7], 1.0, 32, schedule="cifar10")
    eng.engine("preset:sd2-base", "engine", "adaptive(...)", 2, 5500, 10.0, [3, 7], 1.0, 256, schedule="cifar10")
    eng.bare("preset:sd2-base", "float16", 256, 460.0)
    eng.slice("preset:sd2-base", "imagenet", 1000, "adaptive(n_samples=[4])", 4000, 8.0)
    meta = {"date": date, "device": "NVIDIA H200", "device_tag": "h200", "cuda_available": True, "torch": "2.11.0+cu130", "commit": "abc1234", "quick": False}
    sections = {"kernels": {"status": "ok", "budget_s": 45, "seconds": 30}, "compile": {"status": "partial: killed at its budget of 110 s", "budget_s": 110, "seconds": 110}}
    return finalize(read_records(rec_path), meta, sections)


def test_finalize_derives_the_figures_and_checks_the_targets(tmp_path):
    p = _synthetic(tmp_path)
    d64 = next(d for d in p["denoisers"] if d["variant"] == "eager-sdpa" and d["batch"] == 64)
    assert d64["evals_per_s"] == pytest.approx(64 / 0.15, rel=1e-3)
    assert d64["achieved_tflops"] == pytest.approx(804.26e9 * 64 / 0.15 / 1e12, rel=1e-3)
    assert d64["mfu_vs_matmul"] == pytest.approx(804.26e9 * 64 / 0.15 / 790e12, abs=1e-3)
    assert d64["mfu_vs_spec"] == pytest.approx(804.26e9 * 64 / 0.15 / 989.5e12, abs=1e-3)
    t = {g["target"]: g for g in p["targets"]}
    assert t["mfu"]["met"] is True and "compile-cudagraphs" in t["mfu"]["detail"]  # 515 TFLOP/s = 0.65 of the matmul
    assert t["kernel_bandwidth"]["met"] is False and t["kernel_bandwidth"]["value"] == pytest.approx(1573 / 4300, abs=2e-3)
    assert t["engine_vs_reference"]["value"] == pytest.approx(1.2) and t["engine_vs_reference"]["met"] is False
    assert t["engine_overhead"]["value"] == pytest.approx(10.0 / (0.46 * 5500 / 256) - 1, abs=1e-3)
    img = {r["schedule"]: r for r in p["per_image"] if r["system"] == "engine"}
    assert img["Li et al. CIFAR-10"]["seconds_per_image"] == 5.0
    assert img["Li et al. ImageNet"]["evals_per_image"] == 124500 and img["Li et al. ImageNet"]["seconds_per_image"] == pytest.approx(124500 / 500)
    assert "extrapolated" in img["Li et al. ImageNet"]["how"]
    lines = "\n".join(summary_lines(p))
    assert "target mfu: MET" in lines and "target kernel_bandwidth: MISSED" in lines and "not run: TensorRT" in lines


def test_readme_gpu_table_renders_the_written_file(tmp_path):
    p = _synthetic(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    write_payload(results / "gpu_h200_2026-12-02.json", p)
    write_payload(results / "gpu_cpu_2026-12-03.json", {**p, "cuda_available": False, "date": "2026-12-03"})  # a CPU smoke run: never rendered
    latest = _latest_gpu(results)
    assert latest["_file"] == "gpu_h200_2026-12-02.json"
    md = "\n".join(render_gpu(latest, latest["_file"]))
    assert "**GPU: NVIDIA H200**" in md and "[json](bench/results/gpu_h200_2026-12-02.json)" in md
    assert "| preset:sd2-base | compile-cudagraphs | float16 | 64 | 100.0 | 640 | 515 | 0.65 | 0.52 | 80 |" in md
    assert "| make_noisy | float16 | 256 | 4194 |" in md
    assert "**1.20x**" in md and "| Li et al. ImageNet | engine | preset:sd2-base | 124500 | 249.00 |" in md
    assert "Not run: TensorRT (not installable on the device)." in md
    assert "compile: partial: killed at its budget of 110 s" in md


# -- end to end on the CPU ----------------------------------------------------------------------------
@pytest.mark.slow
def test_gpu_suite_runs_on_the_cpu(tmp_path):
    """``python -m bench.gpu --quick`` without CUDA: the CPU-sized parts run, the CUDA-only ones say why not."""
    p = subprocess.run([sys.executable, "-m", "bench.gpu", "--quick", "--budget-scale", "3", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in tmp_path.iterdir())
    assert len(files) <= 8 and any(f.endswith(".png") for f in files) and any(f.endswith(".log") for f in files)
    res = json.loads(next(tmp_path.glob("gpu_*[0-9].json")).read_text())
    assert res["benchmark"] == "gpu" and res["cuda_available"] is False
    st = {k: v["status"] for k, v in res["sections"].items()}
    assert not any(s.startswith("failed") for s in st.values()), st
    assert st["kernels"].startswith("skipped: no CUDA device") and st["compile"] == "skipped: not in --quick"
    assert res["ceilings"]["copy_GBps"] > 0 and res["ceilings"]["matmul_bf16_tflops"] > 0
    assert {f["model"] for f in res["flops"]} >= {"preset:sd2-base", "preset:sd15", "preset:dit-xl-2-256"}
    assert "skipped" in res["tests"]["summary"] and res["tests"]["counts"].get("passed", 0) == 0  # every CUDA test skips here
    ref = res["engine"]["reference"]
    assert ref["model"] == "digits" and ref["evals"] > 0
    if "engine" in res["engine"]:  # same noise, same policy: the digits labels agree (a loaded machine may cut the section short)
        assert res["engine"]["labels_agree"] == f"{ref['images']}/{ref['images']}"
    assert {n["what"] for n in res["not_run"]} >= {"ONNX Runtime CUDA", "TensorRT"}
    assert all(t["met"] is None for t in res["targets"])  # GPU targets: not measured on the CPU
    assert "== bench.gpu:" in p.stdout and "target mfu: not measured" in p.stdout
    render_gpu(res, "gpu_cpu.json")  # the renderer accepts the suite's own file as written


# -- the CUDA branches, dry-run on CPU tensors ----------------------------------------------------------
@pytest.mark.slow
def test_cuda_code_paths_dry_run_on_cpu(tmp_path, monkeypatch):
    """Every CUDA branch of the sections, run on CPU tensors at toy sizes: Triton under the interpreter,
    the digits model in place of the presets, ``torch.compile`` replaced by the identity. It catches
    errors in the glue (arguments, shapes, record fields) that would otherwise first show on the GPU;
    its timings and FLOPs mean nothing, and the real CUDA calls (events, do_bench, CUDA graphs,
    compiled kernels) are not exercised."""
    pytest.importorskip("triton")
    import torch

    import bench.gpu_measure as gm
    import bench.gpu_sections as gs
    import diffcls_fast
    from bench.gpu_schema import LI_SCHEDULES

    real_load = diffcls_fast.load_model
    monkeypatch.setattr(diffcls_fast, "load_model", lambda name, device=None, dtype=None: real_load("digits", device="cpu", dtype=dtype))
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)
    monkeypatch.setattr(gs, "copy_gbps", lambda dev, n: gm.copy_gbps(dev, 1 << 20))
    monkeypatch.setattr(gs, "matmul_tflops", lambda dev, n, dtype: gm.matmul_tflops(dev, 64, dtype))
    monkeypatch.setattr(gs, "preset_flops", lambda name, b: 1e9 * b)
    small = {
        "KERNEL_CASES": {"sd": ((4, 8, 8), [64], [64]), "digits": ((1, 8, 8), [8], [8])},
        "KERNEL_DTYPES": {False: [torch.float16], True: [torch.float16]},
        "DENOISER_PRESETS": {False: ["sd2-base"], True: ["sd2-base"]},
        "DENOISER_BATCHES": {False: [8], True: [8]},
        "DENOISER_VARIANTS": {False: [("eager-sdpa", torch.float16), ("eager-xformers", torch.float16)], True: [("eager-sdpa", torch.float16)]},
        "STEP_BATCHES": {False: [8], True: [8]},
        "ENGINE_BATCH": 32,
        "IMAGENET_SLICE": {False: (10, 2), True: (10, 2)},
        "COMPILE_BATCHES": [8],
        "PROFILE_GRID": 2,
        "PROFILE_KERNEL_CASE": (16, (4, 8, 8)),
        "LI_SCHEDULES": {**LI_SCHEDULES, "cifar10": {**LI_SCHEDULES["cifar10"], "n_samples": [3, 6], "to_keep": [2, 1]}},
    }
    for k, v in small.items():
        monkeypatch.setattr(gs, k, v)

    class CudaBranches(gs.Ctx):
        @property
        def cuda(self) -> bool:
            return True

    records = tmp_path / "r.jsonl"
    ctx = CudaBranches(torch.device("cpu"), quick=False, deadline=time.time() + 600, out=tmp_path, profile_path=tmp_path / "p.txt", missed=["mfu", "engine_overhead", "kernel_bandwidth"])
    status = {name: fn(Recorder(records, name), ctx) for name, fn in gs.SECTIONS.items()}
    assert status == dict.fromkeys(gs.SECTIONS, "ok"), status
    p = finalize(read_records(records), {"device": "cpu", "date": "2026-12-01"}, {})
    assert {(k["op"], k["latent"]) for k in p["kernels"]} == {(op, lat) for op in ("make_noisy", "query_errors") for lat in ("sd", "digits")}
    assert all(k["fused_ms"] > 0 and k["max_abs_diff"] < 2e-3 for k in p["kernels"])  # fused vs reference, checked by the section itself
    assert {d["variant"] for d in p["denoisers"]} == {"eager-sdpa", "compile-cudagraphs", "compile-default"}
    assert all(d["flops_per_call"] for d in p["denoisers"]) and all(d["rel_diff_vs_eager"] < 1e-3 for d in p["denoisers"] if d["compile_s"] is not None)
    assert {s["kernels"] for s in p["steps"]} == {"fused", "reference"}
    assert p["engine"]["labels_agree"] == "2/2" and p["engine"]["same_work"] and p["engine"]["overhead_vs_bare"] is not None
    assert any(r["how"].startswith("extrapolated") for r in p["per_image"])
    assert {pr["target"] for pr in p["profiles"]} == {"mfu", "engine_overhead", "kernel_bandwidth"}
    assert [n["what"] for n in p["not_run"]] == ["xformers"]
    assert "== mfu:" in (tmp_path / "p.txt").read_text()
