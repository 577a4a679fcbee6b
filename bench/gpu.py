"""The GPU suite: one command, ``python -m bench.gpu``, runs the CUDA tests, measures the engine, checks its targets.

On the device tool's GPU machine (H100 or H200), as ONE call, after ``python scripts/fetch_gpu_wheels.py`` here (it
fills the git-ignored ``.whl/`` with the wheels that machine lacks and checks the 64 MiB that may travel)::

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD "
                "&& PYTHONUNBUFFERED=1 python3 -m bench.gpu --out $OUT",
        carry=[".whl"], timeout_s=560)

With under ~5 minutes of device time left, ``--quick`` and ``timeout_s=240``. Then copy ``gpu_<device>_<date>.json``
from the returned files into ``bench/results/`` and run ``python -m bench.report``. Each section (``PLAN``) runs in a
child process killed at its budget, so none can eat the call; each measurement is on disk (``_records.jsonl``, beside
``.json``, ``.log``, ``_pytest.xml``, ``_profile.txt``) once made. Without CUDA the sections run their CPU-sized parts
(ceilings, FLOP counts, the digits model) and say what they skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from collections import namedtuple
from functools import partial
from operator import attrgetter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.engine.noise import image_key
from diffcls_fast.export import apply_backend
from diffcls_fast.images import preprocess
from diffcls_fast.kernels import make_noisy, query_errors, reference
from diffcls_fast.models.common import make_unet_denoiser, raw_network_call
from diffcls_fast.models.presets import PRESETS

from . import gpu_measure as gm
from .common import device_tag, environment
from .gpu_measure import read_records, record, sync, time_fn
from .reference_loop import reference_classify
from .report import render_gpu
from .throughput import bare_denoiser_seconds, workload

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PLAN = {  # budgets in seconds, full and --quick (0: not in --quick; the suite stops at --budget, 510 or 190 s)
    "kernels": (45, 25),  # ceilings (copy, bf16 and fp16 matmul); make_noisy and query_errors GB/s, fused vs torch
    "tests": (150, 70),  # pytest -m cuda tests (--quick: "cuda and not slow")
    "denoisers": (90, 35),  # the presets (random weights): ms, evals/s, MFU by backend, dtype, batch; one engine step
    "engine": (75, 35),  # vs bench/reference_loop.py at equal work (same noise, no speculation); bare calls; ImageNet
    "compile": (110, 0),  # torch.compile of sd2-base fp16: the engine's backend (CUDA graphs) and mode="default"
    "profile": (30, 20),  # torch.profiler top ops of whatever missed its target: last, as it looks at what missed
}
NO_CUDA = "skipped: no CUDA device"
SD2 = "preset:sd2-base"
fp16, bf16 = torch.float16, torch.bfloat16
NOT_RUN = {  # distribution: (the backend, why it is not here where scripts/fetch_gpu_wheels.py's manifest does not say)
    "onnxruntime-gpu": ("ONNX Runtime CUDA", "onnxruntime-gpu is too large to carry in 64 MiB"),
    "tensorrt": ("TensorRT", "PyPI's tensorrt is a stub that fetches the real wheels from NVIDIA's index"),
    "xformers": ("xformers", "scripts/fetch_gpu_wheels.py carries its wheel"),
}
# fmt: off
FULL = dict(
    kernel_cases={"sd": ((4, 64, 64), [64, 128, 256, 1024]), "digits": ((1, 8, 8), [64, 256])},  # shape, Q
    kernel_dtypes=[fp16, bf16], step_batches=[64, 256], tests_marker="cuda", ceilings=(1 << 30, 8192),  # bytes, n^3
    presets=["sd2-base", "sd15", "dit-xl-2-256"], batches=[8, 32, 64, 128, 256],
    variants=[("eager-sdpa", fp16), ("eager-sdpa", bf16), ("eager-xformers", fp16)],
    engine_batch=256, engine_images=2, engine_schedule=dict(n_samples=[50, 500], to_keep=[5, 1]),  # Li's CIFAR-10
    imagenet_slice=(1000, 4), compile_batches=[64, 256],  # ImageNet slice: classes, samples per class
    grid=26, profile_kernels=(256, (4, 64, 64)),  # exhaustive: 10 classes x 26 samples, a batch of 256 and a tail
)
QUICK = FULL | dict(
    kernel_cases={"sd": ((4, 64, 64), [64, 256]), "digits": ((1, 8, 8), [256])}, kernel_dtypes=[fp16],
    presets=["sd2-base"], batches=[8, 64, 256], step_batches=[64], variants=[("eager-sdpa", fp16)],
    engine_images=1, imagenet_slice=(1000, 1), tests_marker="cuda and not slow",
)
CPU = dict(  # the digits model for every preset, and a 95-evaluation schedule: Li's 2,750 take minutes on a CPU
    ceilings=(1 << 26, 512), presets=["digits"], batches=[8, 64], step_batches=[64], variants=[("eager-sdpa", None)],
    meta_flops=[("sd2-base", 1), ("sd2-base", 2), ("sd15", 1), ("dit-xl-2-256", 1)],  # they scale with the batch
    engine_schedule=dict(n_samples=[5, 20], to_keep=[3, 1]), imagenet_slice=(10, 5), grid=3,
)
# fmt: on


# A section's context: what it measures (FULL, QUICK, either updated with CPU), the time.time() it stops by, its files'
# path less the suffix, the targets missed so far (for the profile), the CUDA branches (the tests' dry run: on a CPU).
Ctx = namedtuple("Ctx", "size deadline base missed cuda", defaults=("", (), DEV.type == "cuda"))


def _wall(fn):
    """(seconds, result) of ``fn()``, synchronized on both sides."""
    sync(DEV)
    t0, out = time.perf_counter(), fn()
    sync(DEV)
    return time.perf_counter() - t0, out


def _kernels(cuda: bool) -> dict:
    """{name: (make_noisy, query_errors)}: the fused Triton kernels where there is CUDA, and torch's reference."""
    if not cuda:  # the fused kernels import Triton, which may be missing without CUDA
        return {"reference": (reference.make_noisy, reference.query_errors)}
    from diffcls_fast.kernels import fused_errors, fused_noise

    return {"fused": (fused_noise.make_noisy, fused_errors.query_errors)} | _kernels(False)


# -- the sections: each records through ``rec`` and returns "ok", "partial: ..." or "skipped: ..." ---------------
def section_kernels(rec, ctx: Ctx) -> str:
    nbytes, n = ctx.size["ceilings"]
    src = torch.randn(nbytes // 2, dtype=fp16, device=DEV)
    ms = gm.bench_ms(partial(torch.empty_like(src).copy_, src), DEV)
    rec("ceiling", name="copy", value=2 * nbytes / ms / 1e6, unit="GB/s", detail=f"{nbytes >> 20} MiB, read + written")
    for name, dtype in (("matmul_bf16", bf16), ("matmul_fp16", fp16)):
        a, b = (torch.randn(n, n, device=DEV).to(dtype) for _ in range(2))  # random data: zeros run faster
        ms = time_fn(partial(torch.mm, a, b, out=torch.empty_like(a)), DEV, 3, 0, 10, 10)["ms"]
        rec("ceiling", name=name, value=2 * n**3 / ms / 1e9, unit="TFLOP/s", detail=f"{n}^3, median of 10")
    if not ctx.cuda:
        return f"{NO_CUDA} (ceilings measured on the CPU; tests/kernels runs the Triton kernels interpreted)"
    impls = _kernels(True).values()
    for latent, (shape, qs) in ctx.size["kernel_cases"].items():
        for dtype, q in ((dtype, q) for dtype in ctx.size["kernel_dtypes"] for q in qs):
            # One x0 and eps row per query: the engine shares rows between queries, but shared rows stay in the L2
            # and the bytes counted below would then overstate the memory traffic.
            args = gm.kernel_inputs(q, shape, DEV, q, q, seed=q)
            out = torch.empty(q, *shape, dtype=dtype, device=DEV)
            hat = torch.randn(q, *shape, generator=torch.Generator().manual_seed(q)).to(DEV, dtype)
            size, case = torch.finfo(dtype).bits // 8, dict(latent=latent, shape=shape, dtype=dtype, Q=q)
            pairs = zip(*[(partial(f, *args, out=out), partial(g, hat, args[1], args[3])) for f, g in impls])
            # Bytes per element: x0 and eps read (fp32) and x_t written; eps_hat and eps read.
            for op, (fused, eager), row in zip(("make_noisy", "query_errors"), pairs, (8 + size, size + 4)):
                got, want = fused().float(), eager().float()  # float(): copies of make_noisy's shared ``out``
                err = (got - want).abs() / (want.abs().clamp_min(1e-30) if op == "query_errors" else 1)  # relative
                ms = dict(fused_ms=gm.bench_ms(fused, DEV), eager_ms=gm.bench_ms(eager, DEV), nbytes=out.numel() * row)
                rec("kernel", op=op, **case, max_abs_diff=err.max().item(), **ms)
    return "ok"


def section_tests(rec, ctx: Ctx) -> str:
    import pytest

    class Outcomes:  # each outcome on disk at once: a kill at the budget keeps those reported so far
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or not report.passed:
                outcome = "error" if report.failed and report.when != "call" else report.outcome
                reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else None
                rec("test", id=report.nodeid, outcome=outcome, reason=reason)

    args = ["-m", ctx.size["tests_marker"], "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    rc = int(pytest.main([*args, f"--junitxml={ctx.base}_pytest.xml", str(TESTS)], plugins=[Outcomes()]))
    rec("tests", marker=ctx.size["tests_marker"], rc=rc)
    return "ok" if rc in (0, 5) else f"failed: pytest exit code {rc}"  # 5: no test collected


def section_denoisers(rec, ctx: Ctx) -> str:
    size = ctx.size
    for name, b in size.get("meta_flops") or [(n, b) for n in size["presets"] for b in size["batches"]]:
        rec("flops", model=f"preset:{name}", batch=b, flops=gm.preset_flops(name, b), where="meta")
    # Eager SDPA for every preset first, xformers (where installed; the driver says where not) last: a broken
    # xformers can then only cost its own rows.
    variants = [v for v in size["variants"] if "xformers" not in v[0] or _version("xformers")]
    work = sorted(((n, *v) for n in size["presets"] for v in variants), key=lambda w: "xformers" in w[1])
    for i, (name, variant, dtype) in enumerate(work):
        model = load_model(f"preset:{name}" if name in PRESETS else name, device=DEV, dtype=dtype)
        if variant == "eager-xformers":
            try:
                importlib.import_module("xformers.ops")  # its own error, where it does not import
                model = apply_backend(model, "torch", xformers=True)
                model.denoise(*gm.random_inputs(model, 8))
            except Exception as e:  # recorded: xformers' kernels may not load against this torch
                rec("not_run", what=f"xformers on preset:{name}", reason=f"it failed: {type(e).__name__}: {e}"[:300])
                continue
        ids = dict(model=model.name, dtype=model.dtype)
        for b in size["batches"]:
            fn = partial(model.denoise, *gm.random_inputs(model, b))
            if name not in PRESETS:  # the digits model: its FLOPs counted where it runs
                with FlopCounterMode(display=False) as fc:
                    fn()
                rec("flops", model=model.name, batch=b, flops=fc.get_total_flops(), where=DEV.type)
            timing = time_fn(fn, DEV, warmup=2 if b <= 64 else 1, deadline=ctx.deadline)
            rec("denoiser", **ids, variant=variant, batch=b, **timing)
        # One engine step (make_noisy + denoiser + query_errors) on the first: sd2-base eager fp16, fused vs torch
        for b in size["step_batches"] if i == 0 else []:
            _, t, c = gm.random_inputs(model, b)
            a = model.alphas_cumprod.to(DEV, torch.float32)[t].sqrt()
            args = gm.kernel_inputs(b, model.latent_shape, DEV, max(1, b // 10), max(1, b // 4), seed=b, a=a)
            buf = torch.empty(b, *model.latent_shape, dtype=model.dtype, device=DEV)
            x = reference.make_noisy(*args, out=buf).clone()
            bare = time_fn(partial(model.denoise, x, t, c), DEV, deadline=ctx.deadline)["ms"]
            for kernels, (noisy, errors) in _kernels(ctx.cuda).items():
                step = lambda: errors(model.denoise(noisy(*args, out=buf), t, c), args[1], args[3])  # noqa: B023
                ms = time_fn(step, DEV, deadline=ctx.deadline)["ms"]
                rec("step", **ids, batch=b, kernels=kernels, step_ms=ms, denoise_ms=bare)
    return "ok" if ctx.cuda else f"{NO_CUDA} (preset FLOPs counted on the meta device; timed the digits model)"


def section_engine(rec, ctx: Ctx) -> str:
    size, name = ctx.size, SD2 if ctx.cuda else "digits"
    batch, sched = size["engine_batch"], size["engine_schedule"]
    model = load_model(name, device=DEV)  # fp16 on CUDA (the default), fp32 on the CPU
    images, _, spec = workload(model, size["engine_images"], 10)
    res = model.image_resolution, model.image_channels
    pixels = [im if torch.is_tensor(im) else preprocess(im, *res) for im in images]  # the presets' are tensors
    cond, x0, keys = model.encode_prompts(spec.prompts), model.encode_images(pixels), [image_key(px) for px in pixels]
    common = dict(model=name, schedule="cifar10" if ctx.cuda else "smoke", dtype=model.dtype, backend=model.backend)
    engine = partial(DiffusionClassifier, model, batch_size=batch, use_cache=False, speculate="none")
    # Warm-ups (cuDNN handles, the fused kernels' JIT, the allocator): reported, never timed in.
    ref_warm, _ = _wall(partial(reference_classify, model, x0[0], cond, [4], [1], key=keys[0]))
    eng_warm, _ = _wall(partial(engine("exhaustive", n_grid=size["grid"]).classify, pixels[:1], spec))
    labels, evals, secs = [], 0, 0.0  # the reference loop, recorded after each image
    for x, k in zip(x0, keys):
        if labels and ctx.deadline - time.time() < 20:  # the engine's run on the same images must fit
            break
        s, (label, n) = _wall(partial(reference_classify, model, x, cond, **sched, key=k))
        labels, evals, secs = labels + [label], evals + n, secs + s
        run = dict(images=len(labels), evals=evals, seconds=secs, labels=labels, warmup_s=ref_warm, batch_size=32)
        run |= dict(policy=f"adaptive {sched} (batch 32, eager, per image)", kernels="torch ops")
        rec("engine", system="reference", **run, **common)
    # The engine on the same images, with the same noise and policy; no speculation, so the work is equal.
    clf = engine("adaptive", **sched)
    wall, out = _wall(partial(clf.classify, pixels[: len(labels)], spec))
    st, run = clf.last_stats, dict(images=len(out), labels=[r.label for r in out], warmup_s=eng_warm, batch_size=batch)
    run |= dict(evals=st.evaluations, seconds=wall, kernels=st.kernels, batch_fill=st.batch_fill)
    rec("engine", system="engine", policy=clf.policy_cfg.describe(), overlap=clf.config.overlap, **run, **common)
    if clf.config.overlap and ctx.deadline - time.time() > 2 * wall + 10:
        # The same run without the overlap (batch k+1 prepared while batch k runs): what the overlap buys on a device.
        seq = engine("adaptive", overlap=False, **sched)
        wall, out = _wall(partial(seq.classify, pixels[: len(labels)], spec))
        st, run = seq.last_stats, run | dict(labels=[r.label for r in out], seconds=wall)
        run |= dict(evals=st.evaluations, batch_fill=st.batch_fill)
        rec("engine", system="engine-sequential", policy=seq.policy_cfg.describe(), overlap=False, **run, **common)
    rec("bare", model=name, dtype=model.dtype, batch=batch, ms=bare_denoiser_seconds(model, cond, batch, 5) * 1e3)
    # Li's ImageNet schedule is 124,500 evaluations per image: time a slice, extrapolate (the digits model's own 10
    # classes: its tokenizer cannot tell 1,000 made-up class names apart).
    n_cls, k = size["imagenet_slice"]
    clf, spec = engine("adaptive", n_samples=[k], to_keep=[1]), workload(model, 1, n_cls)[2]
    clf.classify(pixels[:1], spec)
    st = clf.last_stats  # st.seconds: the scoring loop alone (prompt encoding is setup_seconds); the model is warm
    slice_ = dict(classes=len(spec), policy=clf.policy_cfg.describe(), evals=st.evaluations, seconds=st.seconds)
    rec("slice", model=name, schedule="imagenet", **slice_)
    return "ok"


def section_compile(rec, ctx: Ctx) -> str:
    if not ctx.cuda:
        return f"{NO_CUDA} (the compile backend's CUDA graphs exist only on CUDA)"
    model = load_model(SD2, device=DEV, dtype=fp16)
    # The engine's --backend compile (mode="reduce-overhead": a CUDA graph per bucket size), then mode="default"
    # (inductor kernels, no graphs), which the backend never uses on CUDA: what the graphs are worth.
    graphless = raw_network_call(torch.compile(model.network, mode="default", dynamic=False))
    modes = {"compile-cudagraphs": apply_backend(model, "compile").denoise}
    modes["compile-default"] = make_unet_denoiser(graphless, model.alphas_cumprod, model.prediction_type, DEV)
    for b in ctx.size["compile_batches"]:  # batch 64 in both modes first: the MFU target is at batch >= 64
        rec("flops", model=model.name, batch=b, flops=gm.preset_flops("sd2-base", b), where="meta")
        x, t, c = gm.random_inputs(model, b)
        want = model.denoise(x, t, c).float()
        for variant, denoise in modes.items():
            first, got = _wall(partial(denoise, x, t, c))  # the compile, in the first call
            rel = ((got.float() - want).norm() / want.norm()).item()
            timing = time_fn(partial(denoise, x, t, c), DEV, deadline=ctx.deadline) | {"rel_diff_vs_eager": rel}
            rec("denoiser", model=model.name, variant=variant, dtype=fp16, batch=b, compile_s=first, **timing)
    return "ok"


def section_profile(rec, ctx: Ctx) -> str:
    wanted = set(ctx.missed) if ctx.cuda else set(gm.TARGETS)  # on the CPU, every profile
    if not wanted:
        return "skipped: no target missed"
    model = load_model(name := SD2 if ctx.cuda else "digits", device=DEV)

    def add(target, what, fn, calls=3 if ctx.cuda else 1):  # torch.profiler over ``calls`` calls after a warm one
        fn()
        sync(DEV)
        with profile(activities=[ProfilerActivity.CPU, *[ProfilerActivity.CUDA] * (DEV.type == "cuda")]) as prof:
            for _ in range(calls):
                fn()
            sync(DEV)
        # The top ops by self device time; by CPU time without CUDA, and where the host matters (the engine's overhead)
        for where in ["device"] * (DEV.type == "cuda") + ["cpu"] * (DEV.type != "cuda" or target == "engine_overhead"):
            us = attrgetter(f"self_{where}_time_total")
            ranked = [e for e in sorted(prof.key_averages(), key=us, reverse=True)[:15] if us(e) > 0]
            rows = [{"name": e.key[:140], "self_ms": us(e) / 1e3, "calls": e.count} for e in ranked]
            rec("profile", target=target, what=what, top=rows, sort_key=where)
            with open(f"{ctx.base}_profile.txt", "a") as f:  # the table, as the JSON has it
                f.write(f"== {target}: {what} ({where} time)\n{'self ms':>10s} {'calls':>7s}  name\n")
                f.writelines(f"{r['self_ms']:10.3f} {r['calls']:7d}  {r['name']}\n" for r in rows)

    if "mfu" in wanted:
        fn = partial(model.denoise, *gm.random_inputs(model, 64))
        add("mfu", f"{name} denoiser, batch 64, eager SDPA, {model.dtype}", fn)
    if wanted & {"engine_overhead", "engine_vs_reference"}:
        grid, images = ctx.size["grid"], [torch.rand(model.image_channels, *model.image_hw)]
        clf = DiffusionClassifier(model, "exhaustive", n_grid=grid, batch_size=256, use_cache=False, speculate="none")
        fn = partial(clf.classify, images, None if model.class_names else [f"thing {i}" for i in range(10)])
        add("engine_overhead", f"{name} engine, 1 image x 10 classes x {grid} samples (exhaustive), batch 256", fn, 1)
    if "kernel_bandwidth" in wanted:
        q, shape = ctx.size["profile_kernels"]
        args = gm.kernel_inputs(q, shape, DEV, q // 10, q // 4)
        out = torch.empty(q, *shape, dtype=model.dtype, device=DEV)
        kernels = lambda: query_errors(make_noisy(*args, out=out), args[1], args[3])
        add("kernel_bandwidth", f"make_noisy + query_errors, Q={q}, {shape}, {model.dtype}", kernels, 10)
    return "ok"


def _version(dist: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(dist)


def stream(cmd: list[str], budget: float, base: str) -> tuple[int, bool]:
    """Run ``cmd``, its output into ``base``.log; at ``budget`` seconds kill its process group (workers too)."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}  # ``-m`` puts the working directory, ROOT, on the child's path
    with open(f"{base}.log", "a") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=f, start_new_session=True)
        try:
            return proc.wait(timeout=budget), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # SIGKILL: nothing is lost, each record is on disk once made
            return proc.wait(), True


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__, formatter_class=fmt)
    ap.add_argument("--quick", action="store_true", help="the ~3-minute plan")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="the result files' folder (bench/results)")
    ap.add_argument("--budget", type=float, help="seconds for the whole suite (default 510, --quick 190)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (for a slow, shared CPU)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # JSON: the section a child process runs, and how
    a = ap.parse_args(argv)
    if a.child:  # one section: its status recorded, or the error that ended it (the parent goes on)
        c = json.loads(a.child)
        rec, size = partial(record, f"{c['base']}_records.jsonl", c["section"]), QUICK if a.quick else FULL
        ctx = Ctx(size | ({} if DEV.type == "cuda" else CPU), c["deadline"], c["base"], tuple(c["missed"]))
        try:
            status = globals()[f"section_{c['section']}"](rec, ctx)
        except Exception:
            print(tb := traceback.format_exc(), flush=True)
            rec("error", text=tb)
            status = "failed: " + tb.strip().splitlines()[-1]
        rec("status", status=status)
        return int(status.startswith("failed"))
    budget = a.budget or (190 if a.quick else 510) * a.budget_scale
    t_end, dists = time.time() + budget, ("triton", "xformers", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")
    meta = environment(DEV) | {"device_tag": device_tag(DEV), "cuda_available": DEV.type == "cuda", "quick": a.quick}
    meta |= {"torch_cuda": torch.version.cuda, "budget_s": budget, "packages": {d: _version(d) for d in dists}}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    base = str(Path(a.out) / f"gpu_{meta['device_tag']}_{meta['date']}")
    records, sections = f"{base}_records.jsonl", {}
    for suffix in ("_records.jsonl", "_profile.txt", "_pytest.xml", ".log"):
        Path(base + suffix).unlink(missing_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)
        with open(f"{base}.log", "a") as f:
            f.write(line + "\n")

    def write() -> dict:  # the result file, rewritten after each section; atomically: a kill never leaves half a file
        Path(f"{base}.tmp").write_text(json.dumps(p := gm.finalize(read_records(records), meta, sections), indent=1))
        os.replace(f"{base}.tmp", f"{base}.json")
        return p

    say(f"bench.gpu: {meta['device']}, {'quick' if a.quick else 'full'}, {budget:.0f} s")
    manifest = ROOT / ".whl" / "manifest.json"  # scripts/fetch_gpu_wheels.py notes there why it carried no wheel
    why = json.loads(manifest.read_text()).get("not_carried", {}) if manifest.is_file() else {}
    for dist, (what, reason) in NOT_RUN.items():  # each backend not run, with its reason: none skipped silently
        if not (v := _version(dist)):
            record(records, "env", "not_run", what=what, reason=f"not installed here: {why.get(dist, reason)}")
        elif dist != "xformers":  # (xformers is run by the denoisers section)
            record(records, "env", "not_run", what=what, reason=f"{dist} {v} is installed; this suite does not run it")
    for name, (full, short) in PLAN.items():  # each in a child process, killed at its budget
        want, left = (short if a.quick else full) * a.budget_scale, t_end - time.time() - 3
        if want == 0 or min(want, left) < 8:  # a child's start alone takes ~5 s
            skip = "not in --quick" if want == 0 else f"{max(left, 0):.0f} s left of the suite's budget"
            sections[name] = {"status": f"skipped: {skip}", "budget_s": 0, "seconds": 0}
            continue
        t0, limit = time.time(), min(want, left)
        say(f"== section {name}: budget {limit:.0f} s")
        missed = [t["target"] for t in write()["targets"] if t["met"] is False]
        args = json.dumps(dict(section=name, base=base, deadline=t0 + limit - 4, missed=missed))
        rc, killed = stream([sys.executable, "-m", "bench.gpu", *["--quick"] * a.quick, "--child", args], limit, base)
        st = [r["status"] for r in read_records(records) if r["kind"] == "status" and r["section"] == name]
        status = st[-1] if st else f"failed: exit code {rc}, no status recorded (see the log)"
        status = f"partial: killed at its budget of {limit:.0f} s" if killed else status
        sections[name] = dict(status=status, budget_s=round(limit, 1), seconds=round(time.time() - t0, 1))
        say(f"== section {name}: {status} ({time.time() - t0:.0f} s)")
    # The docs' GPU table (bench/report.py), then each section's status (what was skipped here, and why).
    lines = render_gpu(p := write(), Path(f"{base}.json").name)
    lines += [f"section {k}: {v['status']} ({v['seconds']:.0f} s)" for k, v in p["sections"].items()]
    lines += [f"ERROR in {e['section']}: {e['text'].strip().splitlines()[-1]}" for e in p["errors"]]
    say("\n".join([*lines, f"wrote {base}.*"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
