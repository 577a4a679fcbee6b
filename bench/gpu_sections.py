"""The measuring sections of ``bench.gpu``; each runs in its own child process (see ``bench/gpu.py``).

Every section takes a :class:`~bench.gpu_schema.Recorder` and a :class:`Ctx`, appends its
measurements one by one, checks ``ctx.deadline`` between measurements (the parent also
kills it at its budget), and returns its status: ``"ok"``, ``"partial: ..."`` or
``"skipped: ..."``. On a machine without CUDA the sections run their CPU-sized versions
where one makes sense (ceilings, FLOP counts, the bundled digits model) so that the
suite's code is exercised end to end; the GPU-only parts say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .gpu_measure import bench_ms, copy_gbps, count_flops, format_top, matmul_tflops, preset_flops, profile_top, random_inputs, sync, time_fn
from .gpu_schema import LI_SCHEDULES, Recorder

NO_CUDA = "skipped: no CUDA device"

# What the CUDA paths measure, full and --quick. Module-level so that the CPU dry run of these
# paths (tests/test_bench_gpu.py) can shrink them; the GPU run uses them as they are.
KERNEL_CASES = {  # latent name -> (shape, full Q list, quick Q list)
    "sd": ((4, 64, 64), [64, 128, 256, 1024], [64, 256]),
    "digits": ((1, 8, 8), [64, 256], [256]),
}
KERNEL_DTYPES = {False: [torch.float16, torch.bfloat16], True: [torch.float16]}
DENOISER_PRESETS = {False: ["sd2-base", "sd15", "dit-xl-2-256"], True: ["sd2-base"]}
DENOISER_BATCHES = {False: [8, 32, 64, 128, 256], True: [8, 64, 256]}
DENOISER_VARIANTS = {False: [("eager-sdpa", torch.float16), ("eager-sdpa", torch.bfloat16), ("eager-xformers", torch.float16)], True: [("eager-sdpa", torch.float16)]}
STEP_BATCHES = {False: [64, 256], True: [64]}
ENGINE_MODEL = "preset:sd2-base"
ENGINE_BATCH = 256
IMAGENET_SLICE = {False: (1000, 4), True: (1000, 1)}  # (classes, samples per class): 4,000 and 1,000 evaluations
COMPILE_BATCHES = [64, 256]
PROFILE_GRID = 26  # exhaustive samples of the profiled engine classify (10 classes: 260 rows, one full batch and a tail)
PROFILE_KERNEL_CASE = (256, (4, 64, 64))  # (Q, latent) of the profiled fused kernels


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    deadline: float  # time.time() by which the section must have stopped measuring
    out: Path
    profile_path: Path | None = None
    missed: list[str] = field(default_factory=list)  # targets missed so far (the profile section looks at these)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- 0 + 1b: ceilings and kernels ------------------------------------------------------------------
def section_kernels(rec: Recorder, ctx: Ctx) -> str:
    dev = ctx.device
    nbytes = (1 << 30) if ctx.cuda else (1 << 26)
    rec.ceiling("copy", copy_gbps(dev, nbytes), "GB/s", f"{nbytes >> 20} MiB fp16 device-to-device copy, bytes read + written, median")
    n = 8192 if ctx.cuda else 512
    for dtype in (torch.bfloat16, torch.float16):
        rec.ceiling(f"matmul_{'bf16' if dtype == torch.bfloat16 else 'fp16'}", matmul_tflops(dev, n, dtype), "TFLOP/s", f"{n}^3 {_dt(dtype)} matmul on random data, 3 warm-ups, median of 10")
    if not ctx.cuda:
        return NO_CUDA + " (ceilings measured on the CPU; the Triton kernels run compiled only on a GPU, tests/kernels checks them under the interpreter)"
    from diffcls_fast.kernels import reference
    from diffcls_fast.kernels.fused_errors import query_errors as tri_errors
    from diffcls_fast.kernels.fused_noise import make_noisy as tri_noisy

    for lname, (shape, q_full, q_quick) in KERNEL_CASES.items():
        qs = q_quick if ctx.quick else q_full
        e = shape[0] * shape[1] * shape[2]
        for dtype in KERNEL_DTYPES[ctx.quick]:
            for q in qs:
                if ctx.left() < 2:
                    return f"partial: budget reached before {lname} {_dt(dtype)} Q={q}"
                g = torch.Generator().manual_seed(q)
                # float32 image latents and noise rows, x_t and eps_hat in the model's dtype. Every query gets
                # its own x0 and eps row (the engine shares them across queries, but shared rows stay in L2 and
                # would make the logical bytes below overstate the memory traffic, and so the GB/s).
                n_img, n_noise = q, q
                x0 = torch.randn(n_img, *shape, generator=g).to(dev)
                eps = torch.randn(n_noise, *shape, generator=g).to(dev)
                img_idx = torch.randint(0, n_img, (q,), generator=g).to(dev)
                noise_idx = torch.randint(0, n_noise, (q,), generator=g).to(dev)
                a = torch.rand(q, generator=g).to(dev)
                b = (1 - a * a).sqrt()
                out = torch.empty(q, *shape, dtype=dtype, device=dev)
                hat = torch.randn(q, *shape, generator=g).to(dev, dtype)
                size = torch.finfo(dtype).bits // 8
                fused_out = tri_noisy(x0, eps, img_idx, noise_idx, a, b, out=torch.empty_like(out))
                diff_n = (fused_out.float() - reference.make_noisy(x0, eps, img_idx, noise_idx, a, b, out=torch.empty_like(out)).float()).abs().max().item()
                rec.kernel(
                    "make_noisy",
                    lname,
                    shape,
                    _dt(dtype),
                    q,
                    bench_ms(lambda: tri_noisy(x0, eps, img_idx, noise_idx, a, b, out=out), dev),  # noqa: B023 (called here, in this iteration)
                    bench_ms(lambda: reference.make_noisy(x0, eps, img_idx, noise_idx, a, b, out=out), dev),  # noqa: B023
                    q * e * (4 + 4 + size),  # logical bytes: x0 and eps rows read (fp32), x_t written
                    diff_n,
                )
                want = reference.query_errors(hat, eps, noise_idx)
                diff_e = ((tri_errors(hat, eps, noise_idx) - want).abs() / want.abs().clamp_min(1e-30)).max().item()
                rec.kernel(
                    "query_errors",
                    lname,
                    shape,
                    _dt(dtype),
                    q,
                    bench_ms(lambda: tri_errors(hat, eps, noise_idx), dev),  # noqa: B023
                    bench_ms(lambda: reference.query_errors(hat, eps, noise_idx), dev),  # noqa: B023
                    q * e * (size + 4),  # eps_hat rows (model dtype) and eps rows (fp32) read
                    diff_e,
                )
    return "ok"


# -- 1c: denoiser throughput, eager ---------------------------------------------------------------
def _has_xformers() -> str | None:
    """None if xformers imports, else why not."""
    try:
        import xformers  # noqa: F401
        import xformers.ops  # noqa: F401
    except ImportError as e:
        return f"xformers does not import here ({e})"
    return None


def section_denoisers(rec: Recorder, ctx: Ctx) -> str:
    from diffcls_fast import load_model
    from diffcls_fast.export import apply_backend
    from diffcls_fast.models.presets import PRESETS

    dev = ctx.device
    if not ctx.cuda:
        # CPU: FLOP counts of every preset (meta device; sd2-base at two batch sizes to show they scale),
        # timing on the bundled digits model only, at CPU-smoke sizes.
        for name in PRESETS:
            for b in (1, 2) if name == "sd2-base" else (1,):
                rec.flops(f"preset:{name}", b, preset_flops(name, b), "meta")
        model = load_model("digits", device=dev)
        for b in (8, 64):
            x, t, c = random_inputs(model, b)
            fl = count_flops(lambda: model.denoise(x, t, c))  # noqa: B023
            rec.flops("digits", b, fl, "cpu")
            rec.denoiser("digits", "eager-sdpa", _dt(model.dtype), b, time_fn(lambda: model.denoise(x, t, c), dev, warmup=2, target_s=0.2, min_calls=2), fl)  # noqa: B023
        _steps(rec, ctx, model, [64])
        return NO_CUDA + " (preset FLOPs counted on the meta device; timing ran on the bundled digits model)"

    presets, batches, variants = DENOISER_PRESETS[ctx.quick], DENOISER_BATCHES[ctx.quick], DENOISER_VARIANTS[ctx.quick]
    no_xf = _has_xformers()
    if no_xf and not ctx.quick:
        rec.not_run("xformers", f"{no_xf}; carry its wheel (scripts/fetch_gpu_wheels.py)")
    for name in presets:
        for b in batches:
            rec.flops(f"preset:{name}", b, preset_flops(name, b), "meta")
    # Eager SDPA for every preset first, xformers last: a broken xformers can then only cost its own rows.
    work = [(name, v, dt) for name in presets for v, dt in variants if v != "eager-xformers"]
    work += [(name, v, dt) for v, dt in variants if v == "eager-xformers" and not no_xf for name in presets]
    for name, variant, dtype in work:
        if ctx.left() < 15:
            return f"partial: budget reached before preset:{name} {variant} {_dt(dtype)}"
        t0 = time.perf_counter()
        model = load_model(f"preset:{name}", device=dev, dtype=dtype)
        if variant == "eager-xformers":
            try:
                model = apply_backend(model, "torch", xformers=True)
                x, t, c = random_inputs(model, 8)
                model.denoise(x, t, c)
            except Exception as e:  # recorded: xformers' kernels may not load against this torch
                rec.not_run(f"xformers on preset:{name}", f"enabling or running it failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
        rec.note(f"preset:{name} {_dt(dtype)}: instantiated with random weights in {time.perf_counter() - t0:.1f} s")
        for b in batches:
            if ctx.left() < 3:
                return f"partial: budget reached at preset:{name} {variant} batch {b}"
            x, t, c = random_inputs(model, b)
            timing = time_fn(lambda: model.denoise(x, t, c), dev, warmup=2 if b <= 64 else 1, target_s=0.6, deadline=ctx.deadline)  # noqa: B023
            rec.denoiser(model.name, variant, _dt(dtype), b, timing, None)
            print(f"{model.name} {variant} {_dt(dtype)} batch {b}: {timing['ms']:.2f} ms", flush=True)
        if name == "sd2-base" and variant == "eager-sdpa" and dtype == torch.float16:
            _steps(rec, ctx, model, STEP_BATCHES[ctx.quick])
        model = None  # free the weights before the next variant
        torch.cuda.empty_cache()
    return "ok"


def _steps(rec: Recorder, ctx: Ctx, model, batches: list[int]) -> None:
    """1b: one engine step (make_noisy + denoiser + query_errors) with fused vs reference kernels,
    and the bare denoiser call on the same inputs."""
    from diffcls_fast.kernels import reference

    impls = {"reference": (reference.make_noisy, reference.query_errors)}
    if ctx.cuda:
        from diffcls_fast.kernels.fused_errors import query_errors as tri_errors
        from diffcls_fast.kernels.fused_noise import make_noisy as tri_noisy

        impls["fused"] = (tri_noisy, tri_errors)
    dev = model.device
    for b in batches:
        if ctx.left() < 5:
            return
        g = torch.Generator().manual_seed(b)
        n_img, n_noise = max(1, b // 10), max(1, b // 4)
        x0 = torch.randn(n_img, *model.latent_shape, generator=g).to(dev)
        eps = torch.randn(n_noise, *model.latent_shape, generator=g).to(dev)
        img_idx = torch.randint(0, n_img, (b,), generator=g).to(dev)
        noise_idx = torch.randint(0, n_noise, (b,), generator=g).to(dev)
        acp = model.alphas_cumprod.to(dev, torch.float32)
        _, t, c = random_inputs(model, b)
        a, bb = acp[t].sqrt(), (1 - acp[t]).sqrt()
        buf = torch.empty(b, *model.latent_shape, dtype=model.dtype, device=dev)
        xt = impls["reference"][0](x0, eps, img_idx, noise_idx, a, bb, out=buf).clone()
        kw = {} if ctx.cuda else dict(warmup=2, target_s=0.2, min_calls=2)  # CPU: smoke sizes
        bare = time_fn(lambda: model.denoise(xt, t, c), dev, deadline=ctx.deadline, **kw)  # noqa: B023
        for kname, (noisy, errors) in impls.items():

            def step(noisy=noisy, errors=errors):
                return errors(model.denoise(noisy(x0, eps, img_idx, noise_idx, a, bb, out=buf), t, c), eps, noise_idx)  # noqa: B023

            rec.step(model.name, _dt(model.dtype), b, kname, time_fn(step, dev, deadline=ctx.deadline, **kw)["ms"], bare["ms"])


# -- 1d + 1e: engine vs reference loop, seconds per image ---------------------------------------------
def section_engine(rec: Recorder, ctx: Ctx) -> str:
    from bench.reference_loop import reference_classify
    from bench.throughput import bare_denoiser_seconds, workload
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.engine.noise import image_key
    from diffcls_fast.engine.prompts import ClassSpec
    from diffcls_fast.images import preprocess

    dev = ctx.device
    name = ENGINE_MODEL if ctx.cuda else "digits"
    model = load_model(name, device=dev)  # fp16 on CUDA (the default), fp32 on the CPU
    li = LI_SCHEDULES["cifar10"]
    if ctx.cuda:
        schedule, sched, warm_grid = "cifar10", dict(n_samples=li["n_samples"], to_keep=li["to_keep"]), 26
    else:  # CPU smoke: a 95-evaluation schedule of the same shape (Li's 2,750 take minutes on a shared CPU)
        schedule, sched, warm_grid = "smoke", dict(n_samples=[5, 20], to_keep=[3, 1]), 2
    n_images = 1 if ctx.quick else 2
    pil, _, spec = workload(model, n_images, li["n_classes"])
    cond = model.encode_prompts(spec.prompts)
    pixels = [im if isinstance(im, torch.Tensor) else preprocess(im, model.image_resolution, model.image_channels) for im in pil]
    x0 = model.encode_images(pixels)
    keys = [image_key(px) for px in pixels]
    batch = ENGINE_BATCH
    # Warm-ups (cuDNN handles, the fused kernels' JIT, the allocator): reported, never timed in.
    t0 = time.perf_counter()
    reference_classify(model, x0[0], cond, [4], [1], key=keys[0])
    sync(dev)
    ref_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    DiffusionClassifier(model, "exhaustive", n_grid=warm_grid, batch_size=batch, use_cache=False, speculate="none").classify(pixels[:1], spec)
    sync(dev)
    eng_warm = time.perf_counter() - t0

    # The reference loop, image by image (a partial result stays recorded).
    labels, evals, secs = [], 0, 0.0
    for x, k in zip(x0, keys):
        if ctx.left() < 20 and labels:
            break
        sync(dev)
        t0 = time.perf_counter()
        lab, ev = reference_classify(model, x, cond, **sched, key=k)
        sync(dev)
        secs += time.perf_counter() - t0
        labels.append(lab)
        evals += ev
        policy = f"adaptive {' '.join(map(str, sched['n_samples']))} / {' '.join(map(str, sched['to_keep']))} (batch 32, eager, per image)"
        rec.engine(name, "reference", policy, len(labels), evals, secs, labels, ref_warm, 32, schedule=schedule, dtype=_dt(model.dtype), backend=model.backend, kernels="torch ops")
        print(f"reference loop: {len(labels)} image(s), {evals / secs:.0f} evals/s", flush=True)
    done = len(labels)
    # The engine on the same images, same noise, same policy; no speculation, so the work is equal.
    clf = DiffusionClassifier(model, "adaptive", **sched, batch_size=batch, use_cache=False, speculate="none")
    sync(dev)
    t0 = time.perf_counter()
    res = clf.classify(pixels[:done], spec)
    sync(dev)
    wall = time.perf_counter() - t0
    st = clf.last_stats
    rec.engine(
        name,
        "engine",
        clf.policy_cfg.describe(),
        done,
        st.evaluations,
        wall,
        [r.label for r in res],
        eng_warm,
        batch,
        schedule=schedule,
        dtype=_dt(model.dtype),
        backend=model.backend,
        kernels=st.kernels,
        batch_fill=round(st.batch_fill, 4),
        evals_needed=int(sum(r.evaluations for r in res)),
    )
    print(f"engine: {done} image(s), {st.evaluations / wall:.0f} evals/s, kernels {st.kernels}", flush=True)
    if ctx.left() < 8:
        return "partial: budget reached before the bare-denoiser and ImageNet-slice measurements"
    rec.bare(name, _dt(model.dtype), batch, bare_denoiser_seconds(model, cond, batch, 3 if ctx.quick else 5) * 1e3)

    # 1e: Li's ImageNet schedule is 124,500 evaluations per image; time a slice and extrapolate.
    if ctx.left() < 10:
        return "partial: budget reached before the ImageNet slice"
    if ctx.cuda:
        n_cls, k = IMAGENET_SLICE[ctx.quick]
        names = model.class_names[:n_cls] if len(model.class_names) >= n_cls else [f"class {i}" for i in range(n_cls)]
        spec_k = ClassSpec.from_names(names, model.prompt_template)
    else:
        spec_k, k = spec, 5  # the digits tokenizer cannot tell 1,000 made-up class names apart: 10 classes
    clf = DiffusionClassifier(model, "adaptive", n_samples=[k], to_keep=[1], batch_size=batch, use_cache=False, speculate="none")
    clf.classify(pixels[:1], spec_k)
    st = clf.last_stats  # st.seconds: the scoring loop alone (prompt encoding is setup_seconds); the model is warm
    rec.slice(name, "imagenet", len(spec_k), clf.policy_cfg.describe(), st.evaluations, st.seconds)
    return "ok"


# -- 1c: torch.compile, with and without CUDA graphs -------------------------------------------------
def section_compile(rec: Recorder, ctx: Ctx) -> str:
    if not ctx.cuda:
        return NO_CUDA + " (the compile backend's CUDA graphs exist only on CUDA)"
    from diffcls_fast import load_model
    from diffcls_fast.export.backends import apply_backend
    from diffcls_fast.models.common import make_unet_denoiser, raw_network_call

    dev = ctx.device
    model = load_model(ENGINE_MODEL, device=dev, dtype=torch.float16)
    batches = COMPILE_BATCHES
    eager_out = {}
    for b in batches:
        rec.flops(model.name, b, preset_flops(ENGINE_MODEL.removeprefix("preset:"), b), "meta")
        x, t, c = random_inputs(model, b)
        eager_out[b] = (x, t, c, model.denoise(x, t, c).float())
    # The engine's own --backend compile first (mode="reduce-overhead": one CUDA graph per bucket size),
    # then mode="default" (inductor kernels, no CUDA graphs; bench-local, the backend always uses graphs on CUDA).
    modes = {
        "compile-cudagraphs": apply_backend(model, "compile").denoise,
        "compile-default": make_unet_denoiser(raw_network_call(torch.compile(model.network, mode="default", dynamic=False)), model.alphas_cumprod, model.prediction_type, dev),
    }
    last_compile = 60.0  # a guess for the first compile, replaced by each measured one
    for b in batches:  # batch 64 in both modes first: the MFU target is at batch >= 64
        for label, denoise in modes.items():
            if ctx.left() < last_compile + 10:
                rec.note(f"{label} batch {b}: not compiled, {ctx.left():.0f} s left and the last compile took {last_compile:.0f} s")
                continue
            x, t, c, want = eager_out[b]
            sync(dev)
            t0 = time.perf_counter()
            got = denoise(x, t, c)
            sync(dev)
            last_compile = time.perf_counter() - t0
            rel = ((got.float() - want).norm() / want.norm()).item()
            timing = time_fn(lambda: denoise(x, t, c), dev, warmup=2, target_s=0.6, deadline=ctx.deadline)  # noqa: B023
            rec.denoiser(model.name, label, "float16", b, {**timing, "rel_diff_vs_eager": rel}, None, compile_s=round(last_compile, 2))
            print(f"{label} batch {b}: compile {last_compile:.1f} s, {timing['ms']:.2f} ms, rel diff vs eager {rel:.2e}", flush=True)
    return "ok"


# -- 3: profiles of what missed its target -------------------------------------------------------
def section_profile(rec: Recorder, ctx: Ctx) -> str:
    from diffcls_fast import DiffusionClassifier, load_model

    dev = ctx.device
    wanted = set(ctx.missed) if ctx.cuda else {"mfu", "engine_overhead", "kernel_bandwidth"}  # CPU: exercise every profile
    if not wanted:
        return "skipped: no target missed"
    name = ENGINE_MODEL if ctx.cuda else "digits"
    model = load_model(name, device=dev)
    text = []
    key = "device" if dev.type == "cuda" else "cpu"
    if "mfu" in wanted:
        x, t, c = random_inputs(model, 64)
        top = profile_top(lambda: model.denoise(x, t, c), dev, calls=3 if ctx.cuda else 1)
        rec.profile("mfu", f"{name} denoiser, batch 64, eager SDPA, {_dt(model.dtype)}, 3 calls", top[key], key)
        text.append(format_top(f"== mfu: {name} denoiser batch 64 ({key} time)", top[key]))
    if wanted & {"engine_overhead", "engine_vs_reference"} and ctx.left() > 10:
        pil = [torch.rand(model.image_channels, *model.image_hw) * 2 - 1]
        spec = None if model.class_names else [f"thing {i}" for i in range(10)]
        grid = PROFILE_GRID if ctx.cuda else 3
        clf = DiffusionClassifier(model, "exhaustive", n_grid=grid, batch_size=256, use_cache=False, speculate="none")
        top = profile_top(lambda: clf.classify(pil, spec), dev, calls=1)
        for k in top:
            rec.profile("engine_overhead", f"{name} engine, 1 image x 10 classes x {grid} samples (exhaustive), batch 256", top[k], k)
            text.append(format_top(f"== engine_overhead: {name} engine classify ({k} time)", top[k]))
    if "kernel_bandwidth" in wanted and ctx.left() > 5:
        from diffcls_fast.kernels import make_noisy, query_errors

        q, shape = PROFILE_KERNEL_CASE
        x0 = torch.randn(q // 10, *shape, device=dev)
        eps = torch.randn(q // 4, *shape, device=dev)
        img_idx = torch.randint(0, q // 10, (q,), device=dev)
        noise_idx = torch.randint(0, q // 4, (q,), device=dev)
        a = torch.rand(q, device=dev)
        b = (1 - a * a).sqrt()
        out = torch.empty(q, *shape, dtype=model.dtype, device=dev)

        def kern():
            for _ in range(10 if ctx.cuda else 2):
                query_errors(make_noisy(x0, eps, img_idx, noise_idx, a, b, out=out), eps, noise_idx)

        top = profile_top(kern, dev)
        rec.profile("kernel_bandwidth", f"make_noisy + query_errors, SD latents, Q={q}, {_dt(model.dtype)}, 30 calls each", top[key], key)
        text.append(format_top(f"== kernel_bandwidth: fused kernels Q={q} ({key} time)", top[key]))
    if ctx.profile_path is not None and text:
        with open(ctx.profile_path, "a") as f:
            f.write("\n".join(text))
    return "ok"


SECTIONS = {
    "kernels": section_kernels,
    "denoisers": section_denoisers,
    "engine": section_engine,
    "compile": section_compile,
    "profile": section_profile,
}
