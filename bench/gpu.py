"""The GPU suite: one command that runs the CUDA tests, measures the engine and checks its targets.

    python -m bench.gpu [--quick] [--out DIR] [--budget SECONDS] [--sections a,b,...]

On the device tool's GPU machine (H100 or H200), as ONE call, after ``python scripts/fetch_gpu_wheels.py`` here (it
fills the git-ignored ``.whl/`` with the wheels that machine lacks and checks the 64 MiB that may travel)::

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD "
                "&& PYTHONUNBUFFERED=1 python3 -m bench.gpu --out $OUT",
        carry=[".whl"], timeout_s=560)

With under ~5 minutes of device time left, ``--quick`` and ``timeout_s=240``. Then copy ``gpu_<device>_<date>.json``
and ``.png`` from the returned files into ``bench/results/`` and run ``python -m bench.report``.

Each section runs in a process of its own that checks its deadline between measurements and is killed at its budget,
so no part can eat the call; each measurement is on disk once made. Budgets in seconds, full/quick (the suite stops
at ``--budget``, default 510/190):

kernels    45/25  ceilings (1 GiB copy, 8192^3 bf16 + fp16 matmul); make_noisy and query_errors GB/s, fused vs torch
tests     150/70  ``pytest -m cuda tests`` (quick: ``"cuda and not slow"``)
denoisers  90/35  sd2-base, sd15, dit-xl-2-256 (random weights), eager SDPA fp16 + bf16, xformers fp16, batch 8-256
                  (quick: sd2-base fp16, 8/64/256): ms, evals/s, MFU; one engine step, fused vs torch kernels
engine     75/35  engine vs bench/reference_loop.py on sd2-base fp16, Li's CIFAR-10 schedule, same noise, no
                  speculation (equal work); bare calls (overhead); Li's ImageNet schedule timed on a slice
compile   110/-   torch.compile of sd2-base fp16: the engine's backend (CUDA graphs) and mode="default"
profile    30/20  torch.profiler top ops of whatever missed its target

Files in ``--out``, each ``gpu_<device>_<date>`` then: ``.json`` (the result), ``.png`` (evals/s and MFU vs batch),
``.log``, ``_records.jsonl``, ``_pytest.xml``, ``_profile.txt``. Without CUDA the sections run their CPU-sized parts
(ceilings, FLOP counts, the digits model) and say what they skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from . import gpu_measure as gm
from .gpu_measure import Recorder, finalize, read_records, sync, time_fn

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
# Budgets in seconds, full and --quick (0: not in --quick); the profile section last, as it looks at what missed.
PLAN = {"kernels": (45, 25), "tests": (150, 70), "denoisers": (90, 35), "engine": (75, 35), "compile": (110, 0)}
PLAN["profile"] = (30, 20)
NO_CUDA = "skipped: no CUDA device"
SD2 = "preset:sd2-base"
fp16, bf16 = torch.float16, torch.bfloat16
# What the CUDA paths measure. Module-level so that the tests' CPU dry run of those paths can shrink it.
# fmt: off
FULL = dict(
    kernel_cases={"sd": ((4, 64, 64), [64, 128, 256, 1024]), "digits": ((1, 8, 8), [64, 256])},  # shape, Q
    kernel_dtypes=[fp16, bf16], step_batches=[64, 256], tests_marker="cuda",
    presets=["sd2-base", "sd15", "dit-xl-2-256"], batches=[8, 32, 64, 128, 256],
    variants=[("eager-sdpa", fp16), ("eager-sdpa", bf16), ("eager-xformers", fp16)],
    engine_batch=256, engine_schedule=dict(n_samples=[50, 500], to_keep=[5, 1]),  # Li's CIFAR-10 schedule
    imagenet_slice=(1000, 4),  # classes, samples per class
    compile_batches=[64, 256],
    profile_grid=26, profile_kernels=(256, (4, 64, 64)),  # 10 classes x 26 samples: a full batch of 256 and a tail
)
QUICK = FULL | dict(
    kernel_cases={"sd": ((4, 64, 64), [64, 256]), "digits": ((1, 8, 8), [256])}, kernel_dtypes=[fp16],
    presets=["sd2-base"], batches=[8, 64, 256], step_batches=[64], variants=[("eager-sdpa", fp16)],
    imagenet_slice=(1000, 1), tests_marker="cuda and not slow",
)
# fmt: on


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    deadline: float  # time.time() by which the section stops measuring
    base: str = ""  # the result files' path, less its suffix
    missed: tuple = ()  # the targets missed so far: what the profile section looks at
    cuda: bool | None = None  # the CUDA branches; the tests' dry run sets it on a CPU device

    def __post_init__(self):
        self.cuda = self.device.type == "cuda" if self.cuda is None else self.cuda
        self.size = QUICK if self.quick else FULL

    def left(self) -> float:
        return self.deadline - time.time()


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _wall(dev, fn):
    """(seconds, result) of ``fn()``, synchronized on both sides."""
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


# -- the sections: each appends records through ``rec`` and returns "ok", "partial: ..." or "skipped: ..." -------
def section_kernels(rec: Recorder, ctx: Ctx) -> str:
    dev, nbytes, n = ctx.device, 1 << (30 if ctx.cuda else 26), 8192 if ctx.cuda else 512
    detail = f"{nbytes >> 20} MiB fp16 device-to-device copy, bytes read + written, median"
    rec("ceiling", name="copy", value=gm.copy_gbps(dev, nbytes), unit="GB/s", detail=detail)
    for name, dtype in (("matmul_bf16", bf16), ("matmul_fp16", fp16)):
        detail = f"{n}^3 {_dt(dtype)} matmul on random data, 3 warm-ups, median of 10"
        rec("ceiling", name=name, value=gm.matmul_tflops(dev, n, dtype), unit="TFLOP/s", detail=detail)
    if not ctx.cuda:
        return f"{NO_CUDA} (ceilings measured on the CPU; tests/kernels runs the Triton kernels interpreted)"
    from diffcls_fast.kernels import reference
    from diffcls_fast.kernels.fused_errors import query_errors as tri_errors
    from diffcls_fast.kernels.fused_noise import make_noisy as tri_noisy

    for latent, (shape, qs) in ctx.size["kernel_cases"].items():
        for dtype, q in ((dtype, q) for dtype in ctx.size["kernel_dtypes"] for q in qs):
            if ctx.left() < 2:
                return f"partial: budget reached before {latent} {_dt(dtype)} Q={q}"
            # One x0 and eps row per query: the engine shares rows between queries, but shared rows stay in the L2
            # and the bytes counted below would then overstate the memory traffic.
            args = gm.kernel_inputs(q, shape, dev, q, q, seed=q)
            out = torch.empty(q, *shape, dtype=dtype, device=dev)
            hat = torch.randn(q, *shape, generator=torch.Generator().manual_seed(q)).to(dev, dtype)
            make_noisy = [partial(f, *args, out=out) for f in (tri_noisy, reference.make_noisy)]
            query_errors = [partial(f, hat, args[1], args[3]) for f in (tri_errors, reference.query_errors)]
            got, want = (f().float().clone() for f in make_noisy)
            diff = {"make_noisy": (got - want).abs().max().item()}
            got, want = (f() for f in query_errors)
            diff["query_errors"] = ((got - want).abs() / want.abs().clamp_min(1e-30)).max().item()  # relative
            rows, size = q * math.prod(shape), torch.finfo(dtype).bits // 8
            # Bytes per row: x0 and eps read (fp32) and x_t written; eps_hat and eps read.
            for op, (fused, eager), row in zip(diff, (make_noisy, query_errors), (8 + size, size + 4)):
                ms = {"fused_ms": gm.bench_ms(fused, dev), "eager_ms": gm.bench_ms(eager, dev), "nbytes": rows * row}
                rec("kernel", op=op, latent=latent, shape=shape, dtype=_dt(dtype), Q=q, max_abs_diff=diff[op], **ms)
    return "ok"


def section_tests(rec: Recorder, ctx: Ctx) -> str:
    import pytest

    class Outcomes:  # each outcome on disk at once: a kill at the budget keeps those reported so far
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or not report.passed:
                outcome = "error" if report.failed and report.when != "call" else report.outcome
                reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else None
                rec("test", id=report.nodeid, outcome=outcome, reason=reason)

    marker = ctx.size["tests_marker"]
    args = ["-m", marker, "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    rc = int(pytest.main([*args, f"--junitxml={ctx.base}_pytest.xml", str(TESTS)], plugins=[Outcomes()]))
    rec("tests", marker=marker, rc=rc)
    return "ok" if rc in (0, 5) else f"failed: pytest exit code {rc}"  # 5: no test collected


def section_denoisers(rec: Recorder, ctx: Ctx) -> str:
    from diffcls_fast import load_model
    from diffcls_fast.export import apply_backend
    from diffcls_fast.models.presets import PRESETS

    dev, size = ctx.device, ctx.size
    if not ctx.cuda:  # every preset's FLOPs (sd2-base at two batch sizes: they scale); timing on the digits model
        for name, b in [(name, 1) for name in PRESETS] + [("sd2-base", 2)]:
            rec("flops", model=f"preset:{name}", batch=b, flops=gm.preset_flops(name, b), where="meta")
        model = load_model("digits", device=dev)
        for b in (8, 64):
            fn = partial(model.denoise, *gm.random_inputs(model, b))
            rec("flops", model="digits", batch=b, flops=gm.count_flops(fn), where="cpu")
            timing = time_fn(fn, dev, target_s=0.2)
            rec("denoiser", model="digits", variant="eager-sdpa", dtype=_dt(model.dtype), batch=b, **timing)
        _steps(rec, ctx, model, [64])
        return f"{NO_CUDA} (preset FLOPs counted on the meta device; timing ran on the bundled digits model)"
    try:
        import xformers.ops  # noqa: F401
    except ImportError as e:  # where it is not installed at all, record_not_run said so
        if _version("xformers") and ("eager-xformers", fp16) in size["variants"]:
            rec("not_run", what="xformers", reason=f"xformers is installed but does not import ({e})")
        size = size | {"variants": [v for v in size["variants"] if v[0] != "eager-xformers"]}
    for name, b in ((name, b) for name in size["presets"] for b in size["batches"]):
        rec("flops", model=f"preset:{name}", batch=b, flops=gm.preset_flops(name, b), where="meta")
    # Eager SDPA for every preset first, xformers last: a broken xformers can then only cost its own rows.
    work = sorted(((n, *v) for n in size["presets"] for v in size["variants"]), key=lambda w: "xformers" in w[1])
    for name, variant, dtype in work:
        if ctx.left() < 15:
            return f"partial: budget reached before preset:{name} {variant} {_dt(dtype)}"
        t0, model = time.perf_counter(), load_model(f"preset:{name}", device=dev, dtype=dtype)
        if variant == "eager-xformers":
            try:
                model = apply_backend(model, "torch", xformers=True)
                model.denoise(*gm.random_inputs(model, 8))
            except Exception as e:  # recorded: xformers' kernels may not load against this torch
                rec("not_run", what=f"xformers on preset:{name}", reason=f"it failed: {type(e).__name__}: {e}"[:300])
                continue
        rec("note", text=f"preset:{name} {_dt(dtype)}: random weights instantiated in {time.perf_counter() - t0:.1f} s")
        for b in size["batches"]:
            if ctx.left() < 3:
                return f"partial: budget reached at preset:{name} {variant} batch {b}"
            fn = partial(model.denoise, *gm.random_inputs(model, b))
            timing = time_fn(fn, dev, warmup=2 if b <= 64 else 1, deadline=ctx.deadline)
            rec("denoiser", model=model.name, variant=variant, dtype=_dt(dtype), batch=b, **timing)
            print(f"{model.name} {variant} {_dt(dtype)} batch {b}: {timing['ms']:.2f} ms", flush=True)
        if (name, variant, dtype) == ("sd2-base", "eager-sdpa", fp16):
            _steps(rec, ctx, model, size["step_batches"])
        model = None  # free the weights before the next variant
        torch.cuda.empty_cache()
    return "ok"


def _step(model, noisy, errors, args, buf, t, c):
    return errors(model.denoise(noisy(*args, out=buf), t, c), args[1], args[3])


def _steps(rec: Recorder, ctx: Ctx, model, batches: list[int]) -> None:
    """One engine step (make_noisy + denoiser + query_errors), fused vs torch kernels, and the bare denoiser call."""
    from diffcls_fast.kernels import reference

    impls = {"reference": (reference.make_noisy, reference.query_errors)}
    if ctx.cuda:
        from diffcls_fast.kernels.fused_errors import query_errors as tri_errors
        from diffcls_fast.kernels.fused_noise import make_noisy as tri_noisy

        impls["fused"] = (tri_noisy, tri_errors)
    dev, shape = model.device, model.latent_shape
    kw = {"deadline": ctx.deadline} | ({} if dev.type == "cuda" else {"target_s": 0.2})
    for b in (b for b in batches if ctx.left() > 5):
        _, t, c = gm.random_inputs(model, b)
        a = model.alphas_cumprod.to(dev, torch.float32)[t].sqrt()
        args = gm.kernel_inputs(b, shape, dev, max(1, b // 10), max(1, b // 4), seed=b, a=a)
        buf = torch.empty(b, *shape, dtype=model.dtype, device=dev)
        bare = time_fn(partial(model.denoise, reference.make_noisy(*args, out=buf).clone(), t, c), dev, **kw)["ms"]
        for kernels, (noisy, errors) in impls.items():
            ms = time_fn(partial(_step, model, noisy, errors, args, buf, t, c), dev, **kw)["ms"]
            rec("step", model=model.name, dtype=_dt(model.dtype), batch=b, kernels=kernels, step_ms=ms, denoise_ms=bare)


def section_engine(rec: Recorder, ctx: Ctx) -> str:
    from bench.reference_loop import reference_classify
    from bench.throughput import bare_denoiser_seconds, workload
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.engine.noise import image_key
    from diffcls_fast.engine.prompts import ClassSpec
    from diffcls_fast.images import preprocess

    dev, batch, name = ctx.device, ctx.size["engine_batch"], SD2 if ctx.cuda else "digits"
    model = load_model(name, device=dev)  # fp16 on CUDA (the default), fp32 on the CPU
    # On the CPU a 95-evaluation schedule of the same shape: Li's 2,750 take minutes on a shared CPU.
    sched = ctx.size["engine_schedule"] if ctx.cuda else dict(n_samples=[5, 20], to_keep=[3, 1])
    images, _, spec = workload(model, 1 if ctx.quick else 2, 10)
    size = model.image_resolution, model.image_channels
    pixels = [im if torch.is_tensor(im) else preprocess(im, *size) for im in images]  # the presets' are tensors
    cond, x0, keys = model.encode_prompts(spec.prompts), model.encode_images(pixels), [image_key(px) for px in pixels]
    common = dict(model=name, schedule="cifar10" if ctx.cuda else "smoke", dtype=_dt(model.dtype))
    engine = partial(DiffusionClassifier, model, batch_size=batch, use_cache=False, speculate="none")
    # Warm-ups (cuDNN handles, the fused kernels' JIT, the allocator): reported, never timed in.
    ref_warm, _ = _wall(dev, partial(reference_classify, model, x0[0], cond, [4], [1], key=keys[0]))
    eng_warm, _ = _wall(dev, partial(engine("exhaustive", n_grid=26 if ctx.cuda else 2).classify, pixels[:1], spec))
    labels, evals, secs = [], 0, 0.0  # the reference loop, recorded after each image
    stages = " / ".join(" ".join(map(str, sched[k])) for k in ("n_samples", "to_keep"))
    policy = f"adaptive {stages} (batch 32, eager, per image)"
    for x, k in zip(x0, keys):
        if labels and ctx.left() < 20:
            break
        s, (label, n) = _wall(dev, partial(reference_classify, model, x, cond, **sched, key=k))
        labels, evals, secs = labels + [label], evals + n, secs + s
        run = dict(images=len(labels), evals=evals, seconds=secs, labels=labels, warmup_s=ref_warm, batch_size=32)
        rec("engine", system="reference", policy=policy, kernels="torch ops", backend=model.backend, **run, **common)
        print(f"reference loop: {len(labels)} image(s), {evals / secs:.0f} evals/s", flush=True)
    # The engine on the same images, with the same noise and policy; no speculation, so the work is equal.
    clf = engine("adaptive", **sched)
    wall, res = _wall(dev, partial(clf.classify, pixels[: len(labels)], spec))
    st, run = clf.last_stats, dict(images=len(res), labels=[r.label for r in res], warmup_s=eng_warm, batch_size=batch)
    run |= dict(evals=st.evaluations, seconds=wall, kernels=st.kernels, batch_fill=st.batch_fill, backend=model.backend)
    rec("engine", system="engine", policy=clf.policy_cfg.describe(), **run, **common)
    print(f"engine: {len(res)} image(s), {st.evaluations / wall:.0f} evals/s, kernels {st.kernels}", flush=True)
    if ctx.left() < 8:
        return "partial: budget reached before the bare-denoiser and ImageNet-slice measurements"
    ms = bare_denoiser_seconds(model, cond, batch, 3 if ctx.quick else 5) * 1e3
    rec("bare", model=name, dtype=_dt(model.dtype), batch=batch, ms=ms)
    if ctx.left() < 10:
        return "partial: budget reached before the ImageNet slice"
    if ctx.cuda:  # Li's ImageNet schedule is 124,500 evaluations per image: time a slice, extrapolate
        n_cls, k = ctx.size["imagenet_slice"]
        names = model.class_names[:n_cls] if len(model.class_names) >= n_cls else [f"class {i}" for i in range(n_cls)]
        spec = ClassSpec.from_names(names, model.prompt_template)
    else:  # the digits tokenizer cannot tell 1,000 made-up class names apart: its 10 classes
        k = 5
    clf = engine("adaptive", n_samples=[k], to_keep=[1])
    clf.classify(pixels[:1], spec)
    st = clf.last_stats  # st.seconds: the scoring loop alone (prompt encoding is setup_seconds); the model is warm
    slice_ = dict(classes=len(spec), policy=clf.policy_cfg.describe(), evals=st.evaluations, seconds=st.seconds)
    rec("slice", model=name, schedule="imagenet", **slice_)
    return "ok"


def section_compile(rec: Recorder, ctx: Ctx) -> str:
    if not ctx.cuda:
        return f"{NO_CUDA} (the compile backend's CUDA graphs exist only on CUDA)"
    from diffcls_fast import load_model
    from diffcls_fast.export.backends import apply_backend
    from diffcls_fast.models.common import make_unet_denoiser, raw_network_call

    dev, model, eager = ctx.device, load_model(SD2, device=ctx.device, dtype=fp16), {}
    for b in ctx.size["compile_batches"]:
        rec("flops", model=model.name, batch=b, flops=gm.preset_flops(SD2.removeprefix("preset:"), b), where="meta")
        x, t, c = gm.random_inputs(model, b)
        eager[b] = (x, t, c, model.denoise(x, t, c).float())
    # The engine's --backend compile (mode="reduce-overhead": a CUDA graph per bucket size), then mode="default"
    # (inductor kernels, no graphs), which the backend never uses on CUDA: what the graphs are worth.
    graphless = raw_network_call(torch.compile(model.network, mode="default", dynamic=False))
    modes = {
        "compile-cudagraphs": apply_backend(model, "compile").denoise,
        "compile-default": make_unet_denoiser(graphless, model.alphas_cumprod, model.prediction_type, dev),
    }
    last = 60.0  # a guess for the first compile, then the last one measured
    for b, (x, t, c, want) in eager.items():  # batch 64 in both modes first: the MFU target is at batch >= 64
        for variant, denoise in modes.items():
            if ctx.left() < last + 10:
                rec("note", text=f"{variant} batch {b} not compiled: {ctx.left():.0f} s left, the last took {last:.0f}")
                continue
            last, got = _wall(dev, partial(denoise, x, t, c))
            rel = ((got.float() - want).norm() / want.norm()).item()
            timing = time_fn(partial(denoise, x, t, c), dev, deadline=ctx.deadline) | {"rel_diff_vs_eager": rel}
            rec("denoiser", model=model.name, variant=variant, dtype="float16", batch=b, compile_s=last, **timing)
            print(f"{variant} batch {b}: compile {last:.1f} s, {timing['ms']:.2f} ms, vs eager {rel:.2e}", flush=True)
    return "ok"


def section_profile(rec: Recorder, ctx: Ctx) -> str:
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.kernels import make_noisy, query_errors

    wanted = set(ctx.missed) if ctx.cuda else {"mfu", "engine_overhead", "kernel_bandwidth"}  # the CPU: every profile
    if not wanted:
        return "skipped: no target missed"
    dev, name = ctx.device, SD2 if ctx.cuda else "digits"
    model, text = load_model(name, device=dev), []

    def add(target, what, fn, calls=3):
        for where, rows in gm.profile_top(fn, dev, calls).items():  # device time; CPU time where the host matters
            if where == "device" or dev.type != "cuda" or target == "engine_overhead":
                rec("profile", target=target, what=what, top=rows, sort_key=where)
                text.append(f"== {target}: {what} ({where} time)\n{'self ms':>10s} {'calls':>7s}  name")
                text.extend(f"{r['self_ms']:10.3f} {r['calls']:7d}  {r['name']}" for r in rows)

    if "mfu" in wanted:
        fn = partial(model.denoise, *gm.random_inputs(model, 64))
        add("mfu", f"{name} denoiser, batch 64, eager SDPA, {_dt(model.dtype)}", fn, 3 if ctx.cuda else 1)
    if wanted & {"engine_overhead", "engine_vs_reference"} and ctx.left() > 10:
        grid, images = ctx.size["profile_grid"] if ctx.cuda else 3, [torch.rand(model.image_channels, *model.image_hw)]
        clf = DiffusionClassifier(model, "exhaustive", n_grid=grid, batch_size=256, use_cache=False, speculate="none")
        fn = partial(clf.classify, images, None if model.class_names else [f"thing {i}" for i in range(10)])
        add("engine_overhead", f"{name} engine, 1 image x 10 classes x {grid} samples (exhaustive), batch 256", fn, 1)
    if "kernel_bandwidth" in wanted and ctx.left() > 5:
        q, shape = ctx.size["profile_kernels"]
        args = gm.kernel_inputs(q, shape, dev, q // 10, q // 4)
        out = torch.empty(q, *shape, dtype=model.dtype, device=dev)

        def kernels():
            for _ in range(10 if ctx.cuda else 2):
                query_errors(make_noisy(*args, out=out), args[1], args[3])

        add("kernel_bandwidth", f"make_noisy + query_errors, Q={q}, {shape}, {_dt(model.dtype)}", kernels)
    with open(f"{ctx.base}_profile.txt", "a") as f:
        f.write("\n".join(text) + "\n")
    return "ok"


SECTIONS = {name: globals()[f"section_{name}"] for name in PLAN}


# -- the driver ---------------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_meta(quick: bool, budget: float) -> dict:
    from .common import device_tag, environment

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    meta = environment(dev) | {"device_tag": device_tag(dev), "cuda_available": dev == "cuda", "quick": quick}
    dists = ("triton", "xformers", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")
    meta |= {"torch_cuda": torch.version.cuda, "budget_s": budget, "packages": {d: _version(d) for d in dists}}
    if dev == "cuda":  # the clocks and limits the numbers were measured under
        p, q = torch.cuda.get_device_properties(0), "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
        try:
            smi = subprocess.check_output(["nvidia-smi", f"--query-gpu={q},temperature.gpu", "--format=csv,noheader"])
            smi = dict(zip([*q.split(","), "temperature"], smi.decode().strip().split(", ")))
        except (OSError, subprocess.SubprocessError) as e:
            smi = f"unavailable ({e})"
        meta["gpu"] = dict(multiprocessors=p.multi_processor_count, memory_GiB=round(p.total_memory / 2**30, 1))
        meta["gpu"] |= dict(capability=f"{p.major}.{p.minor}", nvidia_smi=smi)
    return meta


def record_not_run(rec: Recorder) -> None:
    """The backends this suite does not run on the device, each with its reason: none is skipped silently."""
    manifest = ROOT / ".whl" / "manifest.json"  # scripts/fetch_gpu_wheels.py notes there why it carried no wheel
    why = json.loads(manifest.read_text()).get("not_carried", {}) if manifest.is_file() else {}
    for what, dist, reason in [
        ("ONNX Runtime CUDA", "onnxruntime-gpu", "onnxruntime-gpu is too large to carry in 64 MiB"),
        ("TensorRT", "tensorrt", "PyPI's tensorrt is a stub that fetches the real wheels from NVIDIA's index"),
        ("xformers", "xformers", "scripts/fetch_gpu_wheels.py carries its wheel"),
    ]:
        if not _version(dist):
            rec("not_run", what=what, reason=f"not installed here: {why.get(dist, reason)}")
        elif what != "xformers":
            rec("not_run", what=what, reason=f"{dist} {_version(dist)} is installed, but this suite does not run it")


class SectionRunner:
    """Runs the sections, each in a child process with its own budget; rewrites the result file after each."""

    def __init__(self, out: Path, base: str, quick: bool, budget: float, scale: float = 1.0, meta: dict | None = None):
        self.quick, self.budget, self.scale, self.meta, self.sections = quick, budget, scale, meta or {}, {}
        self.base, self.t_end = str(out / base), time.time() + budget
        for suffix in ("_records.jsonl", "_profile.txt", "_pytest.xml", ".log"):
            Path(self.base + suffix).unlink(missing_ok=True)

    def say(self, line: str) -> None:
        print(line, flush=True)
        with open(f"{self.base}.log", "a") as f:
            f.write(line + "\n")

    def write(self) -> dict:
        p = finalize(read_records(f"{self.base}_records.jsonl"), self.meta, self.sections)
        gm.write_payload(f"{self.base}.json", p)
        return p

    def stream(self, cmd: list[str], budget: float) -> tuple[int, bool]:
        """Run ``cmd``, its output into the log; at ``budget`` seconds kill its process group (workers too)."""
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with open(f"{self.base}.log", "a") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
            try:
                return proc.wait(timeout=budget), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # nothing is lost: each record is on disk once made
                return proc.wait(), True

    def child(self, name: str, budget: float, missed: list[str]) -> str:
        args = dict(section=name, base=self.base, deadline=time.time() + budget - 4, quick=self.quick, missed=missed)
        rc, killed = self.stream([sys.executable, "-m", "bench.gpu", "--child", json.dumps(args)], budget)
        records = read_records(f"{self.base}_records.jsonl")
        st = [r["status"] for r in records if r["kind"] == "status" and r["section"] == name]
        if killed:
            return f"partial: killed at its budget of {budget:.0f} s" + (f" ({st[-1]})" if st else "")
        return st[-1] if st else f"failed: exit code {rc}, no status recorded (see the log)"

    def run(self, selected: set[str] | None = None) -> dict:
        self.say(f"bench.gpu: {self.meta.get('device')}, {'quick' if self.quick else 'full'}, {self.budget:.0f} s")
        record_not_run(Recorder(f"{self.base}_records.jsonl", "env"))
        for name, (full, quick) in PLAN.items():
            want, left = (quick if self.quick else full) * self.scale, self.t_end - time.time() - 3
            budget = min(want, left)
            why = [
                (selected is not None and name not in selected, "not selected (--sections)"),
                (want == 0, "not in --quick"),
                (budget < 8, f"{max(left, 0):.0f} s left of the suite's budget"),  # a child's start alone takes ~5 s
            ]
            if skip := next((w for cond, w in why if cond), None):
                self.sections[name] = {"status": f"skipped: {skip}", "budget_s": 0, "seconds": 0}
                continue
            self.say(f"== section {name}: budget {budget:.0f} s")
            t0, missed = time.time(), [t["target"] for t in self.write()["targets"] if t["met"] is False]
            status = self.child(name, budget, missed)
            self.sections[name] = dict(status=status, budget_s=round(budget, 1), seconds=round(time.time() - t0, 1))
            self.say(f"== section {name}: {status} ({time.time() - t0:.0f} s)")
        p = self.write()
        try:
            plot(p, f"{self.base}.png")
        except Exception as e:  # the PNG is a convenience; the JSON is the result
            self.say(f"plot failed: {type(e).__name__}: {e}")
        from .report import render_gpu

        # The docs' GPU table (bench/report.py), then each section's status (what was skipped here, and why).
        self.say("\n".join(render_gpu(p, Path(f"{self.base}.json").name)))
        self.say("\n".join(f"section {k}: {v['status']} ({v['seconds']:.0f} s)" for k, v in p["sections"].items()))
        self.say("\n".join(f"ERROR in {e['section']}: {e['text'].strip().splitlines()[-1]}" for e in p["errors"]))
        self.say(f"wrote {self.base}.*")
        return p


def plot(p: dict, path: str) -> None:
    """Evaluations/s and MFU against batch size, one line per (model, variant, dtype)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    series: dict[tuple, list] = {}
    for d in sorted(p["denoisers"], key=lambda d: d["batch"]):
        series.setdefault((d["model"].removeprefix("preset:"), d["variant"], d["dtype"]), []).append(d)
    for ax, y, ylabel in zip(axes, ("evals_per_s", "mfu_vs_matmul"), ("evaluations / s", "MFU (vs the bf16 matmul)")):
        for key, rows in series.items():
            ax.plot([d["batch"] for d in rows], [d[y] for d in rows], marker="o", label=" ".join(key))
        ax.set(xscale="log", xlabel="batch", ylabel=ylabel)
        ax.legend(fontsize=5) if series else None
    fig.suptitle(f"bench.gpu — {p['device']}, {p['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def child_main(a: dict) -> int:
    rec = Recorder(f"{a['base']}_records.jsonl", a["section"])
    ctx = Ctx(torch.device("cuda" if torch.cuda.is_available() else "cpu"), a["quick"], a["deadline"], a["base"])
    try:
        rec("status", status=SECTIONS[a["section"]](rec, replace(ctx, missed=tuple(a["missed"]))))
        return 0
    except Exception:  # recorded; the parent reports the section failed and goes on
        print(tb := traceback.format_exc(), flush=True)
        rec("error", text=tb)
        rec("status", status="failed: " + tb.strip().splitlines()[-1])
        return 1


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__, formatter_class=fmt)
    ap.add_argument("--quick", action="store_true", help="the ~3-minute plan")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="the result files' folder (bench/results)")
    ap.add_argument("--budget", type=float, help="seconds for the whole suite (default 510, --quick 190)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (for a slow, shared CPU)")
    ap.add_argument("--sections", help=f"a comma-separated subset of {', '.join(PLAN)}")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # JSON: the section a child process runs, and how
    a = ap.parse_args(argv)
    if a.child:
        return child_main(json.loads(a.child))
    selected = {s.strip() for s in a.sections.split(",")} - {""} if a.sections else None
    if selected and selected - set(PLAN):
        ap.error(f"unknown section(s) {', '.join(sorted(selected - set(PLAN)))}; choose from {', '.join(PLAN)}")
    if a.budget_scale <= 0:
        ap.error("--budget-scale must be > 0")
    budget = a.budget if a.budget is not None else (190 if a.quick else 510) * a.budget_scale
    Path(a.out).mkdir(parents=True, exist_ok=True)
    meta = run_meta(a.quick, budget)
    SectionRunner(Path(a.out), f"gpu_{meta['device_tag']}_{meta['date']}", a.quick, budget, a.budget_scale, meta).run(selected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
