"""The GPU suite's measuring tools (they also run on the CPU) and its result file: sections record raw measurements,
one JSON line each; :func:`finalize` alone derives figures and checks targets, so tests check it on synthetic ones."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peaks (the datasheets quote 2:4 sparsity, twice these); fp16's are the same.
SPEC_BF16_TFLOPS = [("H200", 989.5, "H200 SXM"), ("H100 PCIE", 756.5, "H100 PCIe"), ("H100", 989.5, "H100 SXM")]
# Li et al. 2023: name, classes, n_samples, to_keep, and their seconds per image on an RTX 3090 with SD 2.0.
LI = {
    "cifar10": ("Li et al. CIFAR-10", 10, [50, 500], [5, 1], 30.0),
    "imagenet": ("Li et al. ImageNet", 1000, [50, 100, 500, 1000], [500, 50, 10, 1], 1000.0),
}
TARGETS = {  # key: (threshold, what); engine_overhead is met below its threshold, the others at or above it
    "engine_vs_reference": (3.0, "engine >= 3x the reference loop's evaluations/s at equal work (preset:sd2-base)"),
    "mfu": (0.5, "best backend >= 50% of the measured bf16 matmul rate at batch >= 64 on preset:sd2-base"),
    "kernel_bandwidth": (0.8, "fused kernels >= 80% of the device-to-device copy bandwidth (SD latents, Q 64-256)"),
    "engine_overhead": (0.05, "engine overhead < 5% over bare denoiser calls at the same batch size"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, warmup=2, target_s=0.6, min_calls=3, max_calls=50, deadline: float | None = None) -> dict:
    """Median ms of ``fn()`` over ~``target_s`` s of calls, each synchronized as the engine synchronizes each batch."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm, times = time.perf_counter() - t0, []
    for _ in range(max(min_calls, min(max_calls, int(target_s / max(warm / warmup, 1e-6))))):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
        if deadline is not None and time.time() > deadline:
            break
    return dict(ms=statistics.median(times), ms_min=min(times), ms_max=max(times), calls=len(times), warmup_s=warm)


def bench_ms(fn, device: torch.device) -> float:
    """Median ms of a short op: triton's do_bench on CUDA (it flushes the L2 between calls), else the host clock."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return time_fn(fn, device, warmup=1, target_s=0.2)["ms"]


def preset_flops(name: str, batch: int, dtype: torch.dtype = torch.float16) -> float:
    """FLOPs of one ``preset:name`` denoiser call, counted on the meta device: no memory, no device time."""
    from diffcls_fast.models.presets import PRESETS, preset_network

    p = PRESETS[name]
    cfg, net = p.get("unet", p.get("net")), preset_network(name, device="meta", dtype=dtype)
    with torch.device("meta"), FlopCounterMode(display=False) as fc:  # matmuls, convolutions, attention
        x = torch.randn(batch, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], dtype=dtype)
        t, c = torch.randint(0, 1000, (batch,)), torch.randn(batch, *p.get("text", ()), dtype=dtype)
        net(x, t, encoder_hidden_states=c) if "text" in p else net(x, t, class_labels=t)  # the UNets, the DiT
    return float(fc.get_total_flops())


def random_inputs(model, batch: int, seed: int = 0):
    """(x_t, t, cond) for ``model.denoise``: random (zeros run faster in some kernels); 10 prompts or random classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.latent_shape, generator=g).to(model.device, model.dtype)
    t = torch.randint(0, model.num_timesteps, (batch,), generator=g).to(model.device)
    if model.cond_kind == "class":
        return x, t, torch.randint(0, max(1, len(model.class_names)), (batch,), generator=g).to(model.device)
    names = model.class_names[:10] if len(model.class_names) >= 2 else [f"thing {i}" for i in range(10)]
    table = model.encode_prompts(model.default_prompts[:10] or [model.prompt_template.format(n) for n in names])
    return x, t, table[torch.randint(0, len(table), (batch,), generator=g).to(table.device)]


def kernel_inputs(q: int, shape, device, n_img: int, n_noise: int, seed: int = 0, a=None) -> tuple:
    """The arguments (x0, eps, img_idx, noise_idx, a, b) of ``make_noisy`` for ``q`` queries, float32 rows."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(n, *shape, generator=g).to(device) for n in (n_img, n_noise))
    idx = [torch.randint(0, n, (q,), generator=g).to(device) for n in (n_img, n_noise)]
    a = torch.rand(q, generator=g).to(device) if a is None else a
    return x0, eps, *idx, a, (1 - a * a).sqrt()


def record(path: str | Path, section: str, kind: str, **fields) -> None:
    """Append one JSON line at once (a section's ``rec``): a section killed at its budget keeps all it measured."""
    line = json.dumps({"section": section, "kind": kind, **fields}, default=lambda o: str(o).removeprefix("torch."))
    with open(path, "a") as f:  # (torch.float16 as "float16")
        f.write(line + "\n")


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file, less a torn line (a section killed mid-write)."""
    out = []
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def _r(x, nd: int | None = None):
    """``x`` to ``nd`` decimals, else to 4 significant figures (a CPU's TFLOP/s can be < 0.05); None if not finite."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd if nd is not None else (3 - math.floor(math.log10(abs(x))) if x else 0))


def finalize(records: list[dict], meta: dict, sections: dict) -> dict:
    """The result file from the raw records; pure."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["kind"], []).append({k: v for k, v in r.items() if k != "kind"})
    ceil = {r["name"]: r for r in by.get("ceiling", [])}
    copy, mm, mm16 = (ceil[k]["value"] if k in ceil else None for k in ("copy", "matmul_bf16", "matmul_fp16"))
    peak, src = next(((v, s) for k, v, s in SPEC_BF16_TFLOPS if k in meta.get("device", "").upper()), (None, None))
    p = {"benchmark": "gpu", "schema": 1, **meta, "sections": sections, "tests": None}
    p["ceilings"] = {"copy_GBps": _r(copy), "matmul_bf16_tflops": _r(mm), "matmul_fp16_tflops": _r(mm16)}
    p["ceilings"] |= {"spec_bf16_tflops": peak, "spec_source": src and f"NVIDIA {src} datasheet, dense"}
    p["ceilings"]["details"] = {k: v["detail"] for k, v in ceil.items()}
    if "test" in by or "tests" in by:  # outcomes one by one; a "tests" record once pytest has finished
        outcomes = {r["id"]: r["outcome"] for r in by.get("test", [])}
        counts = {o: list(outcomes.values()).count(o) for o in sorted(set(outcomes.values()))}
        summary = ", ".join(f"{n} {o}" for o, n in counts.items()) or "no test ran"
        p["tests"] = {"marker": None, "rc": None} | (by.get("tests") or [{}])[-1] | {"counts": counts}
        p["tests"]["summary"] = summary if "tests" in by else f"cut off after {summary}"
        p["tests"]["failures"] = [i for i, o in outcomes.items() if o in ("failed", "error")][:60]
        p["tests"]["skip_reasons"] = list(dict.fromkeys(r["reason"] for r in by.get("test", []) if r["reason"]))[:12]
    p["kernels"] = []
    for r in by.get("kernel", []):
        fused, eager = (r["nbytes"] / r[k] / 1e6 for k in ("fused_ms", "eager_ms"))  # bytes / ms / 1e6: GB/s
        r |= {"fused_GBps": _r(fused, 1), "eager_GBps": _r(eager, 1), "speedup": _r(fused / eager, 2)}
        p["kernels"].append(r | {"fraction_of_copy": _r(copy and fused / copy, 3)})
    p["flops"] = by.get("flops", [])
    flops_of = {(r["model"], r["batch"]): r["flops"] for r in p["flops"]}
    p["denoisers"] = []
    for r in by.get("denoiser", []):
        r = {"compile_s": None, "rel_diff_vs_eager": None, "flops_per_call": flops_of.get((r["model"], r["batch"]))} | r
        tflops = r["flops_per_call"] and r["flops_per_call"] / r["ms"] / 1e9
        r |= {"evals_per_s": _r(r["batch"] / r["ms"] * 1e3, 1), "achieved_tflops": _r(tflops, 1)}
        r["mfu_vs_matmul"], r["mfu_vs_spec"] = (_r(c and tflops and tflops / c, 3) for c in (mm, peak))
        p["denoisers"].append(r)
    p["steps"] = [r | {"kernel_share": _r(1 - r["denoise_ms"] / r["step_ms"], 4)} for r in by.get("step", [])]
    p["engine"] = _engine(by)
    p["per_image"] = _per_image(by, p["engine"] or {})
    p["profiles"], p["not_run"], p["errors"] = by.get("profile", []), by.get("not_run", []), by.get("error", [])
    p["targets"] = check_targets(p)
    return p


def _engine(by: dict) -> dict | None:
    runs = {r["system"]: r for r in by.get("engine", [])}  # the last record of each: the reference's, every image
    out = {s: r | {"evals_per_s": _r(r["evals"] / r["seconds"], 1)} for s, r in runs.items()}
    for r in out.values():
        r["seconds_per_image"] = _r(r["seconds"] / r["images"], 3)
    ref, eng = runs.get("reference"), runs.get("engine")
    if ref and eng:
        out["same_work"] = ref["evals"] / ref["images"] == eng["evals"] / eng["images"]
        out["labels_agree"] = f"{sum(a == b for a, b in zip(ref['labels'], eng['labels']))}/{len(eng['labels'])}"
        out["ratio_evals_per_s"] = _r(eng["evals"] / eng["seconds"] / (ref["evals"] / ref["seconds"]), 3)
    seq = runs.get("engine-sequential")
    if seq and eng:  # the engine without its overlap, same images: evals/s with over without
        out["overlap_speedup"] = _r(eng["evals"] / eng["seconds"] / (seq["evals"] / seq["seconds"]), 3)
        same = sum(a == b for a, b in zip(seq["labels"], eng["labels"]))
        out["overlap_labels_agree"] = f"{same}/{len(eng['labels'])}"
    bare = [r for r in by.get("bare", []) if eng and (r["model"], r["batch"]) == (eng["model"], eng["batch_size"])]
    if bare:  # the engine's seconds over those of its evaluations in full bare batches
        out["bare_ms_per_batch"] = ms = bare[-1]["ms"]
        out["overhead_vs_bare"] = _r(eng["seconds"] / (ms * 1e-3 * eng["evals"] / eng["batch_size"]) - 1, 4)
    return out or None


def _per_image(by: dict, engine: dict) -> list[dict]:
    from diffcls_fast.engine.policies.stages import stage_evaluations

    out = []
    for system, e in ((s, engine[s]) for s in ("engine", "reference") if s in engine):
        name, classes, *_, li_s = LI.get(e["schedule"], (f"CPU smoke schedule ({e['policy']})", None, None))
        row = dict(schedule=name, system=system, model=e["model"], classes=classes, li_rtx3090_s=li_s)
        row |= dict(evals_per_image=e["evals"] / e["images"], seconds_per_image=e["seconds_per_image"])
        out.append(row | dict(how=f"measured: {e['images']} whole image(s)"))
    for r in by.get("slice", []):  # Li's ImageNet schedule is too long to run whole: a timed slice, extrapolated
        name, classes, n_samples, to_keep, li_s = LI[r["schedule"]]
        total, rate = stage_evaluations(1000, n_samples, to_keep, classes), r["evals"] / r["seconds"]
        row = dict(schedule=name, system="engine", model=r["model"], classes=classes, li_rtx3090_s=li_s)
        row |= dict(evals_per_image=total, seconds_per_image=_r(total / rate, 2))
        how = f"extrapolated: {r['evals']} evaluations measured ({r['policy']}, {r['classes']} classes)"
        out.append(row | dict(how=f"{how} at {rate:.0f} evals/s, times {total}"))
    return out


def check_targets(p: dict) -> list[dict]:
    """Each target with its value, and met: True, False, or None where it was not measured (on a CPU, say)."""
    e, found = p["engine"] or {}, {}
    if e.get("engine", {}).get("model") == "preset:sd2-base":
        if e.get("same_work") and "ratio_evals_per_s" in e:
            found["engine_vs_reference"] = e["ratio_evals_per_s"], f"{e['labels_agree']} labels agree"
        if "overhead_vs_bare" in e:
            bare = f"bare call {e['bare_ms_per_batch']:.1f} ms at batch {e['engine']['batch_size']}"
            found["engine_overhead"] = e["overhead_vs_bare"], bare
    rows = [d for d in p["denoisers"] if d["model"] == "preset:sd2-base" and d["batch"] >= 64 and d["mfu_vs_matmul"]]
    if best := max(rows, key=lambda d: d["mfu_vs_matmul"], default=None):
        how = "{variant} {dtype} batch {batch}, {achieved_tflops} TFLOP/s".format(**best)
        found["mfu"] = best["mfu_vs_matmul"], how
    ks = [k for k in p["kernels"] if k["latent"] == "sd" and 64 <= k["Q"] <= 256 and k["fraction_of_copy"]]
    if worst := min(ks, key=lambda k: k["fraction_of_copy"], default=None):
        how = "worst: {op} {dtype} Q={Q} at {fused_GBps} GB/s".format(**worst)
        found["kernel_bandwidth"] = worst["fraction_of_copy"], how
    out = []
    for key, (threshold, text) in TARGETS.items():
        value, detail = found.get(key, (None, "not measured"))
        met = None if value is None else value < threshold if key == "engine_overhead" else value >= threshold
        out.append(dict(target=key, text=text, threshold=threshold, value=value, met=met, detail=detail))
    return out
