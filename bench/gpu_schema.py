"""The GPU suite's records, the JSON it writes from them, its targets, summary table and plot.

Sections (run in child processes, see ``bench.gpu``) append raw measurements to a
JSON-lines file through :class:`Recorder`, one line per measurement, flushed at
once, so a killed section keeps what it measured. :func:`finalize` turns the
records into the result file's tables: derived figures (GB/s, evaluations/s,
MFU, ratios) are computed here and only here, and the targets of issue 11 are
checked here. ``bench/report.py`` renders the README table from that file.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

SCHEMA = 1

# Dense (no sparsity) bf16 tensor-core peaks by the vendor's datasheets. The H200 SXM has the H100
# SXM's arithmetic (/work/.library/device/H200.md: "dense bf16 about 990 TFLOP/s"; NVIDIA's H200
# datasheet lists 1,979 TFLOP/s bf16 *with* 2:4 sparsity, i.e. 989.5 dense). fp16 has the same peak.
SPEC_BF16_TFLOPS = [
    ("H200", 989.5, "NVIDIA H200 SXM datasheet: 1,979 TFLOP/s bf16 with sparsity = 989.5 dense"),
    ("H100 PCIE", 756.5, "NVIDIA H100 PCIe datasheet: 1,513 TFLOP/s bf16 with sparsity = 756.5 dense"),
    ("H100", 989.5, "NVIDIA H100 SXM datasheet: 1,979 TFLOP/s bf16 with sparsity = 989.5 dense"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense"),
]

# Li et al. 2023 (../shared/ALGORITHMS.md): seconds per image on an RTX 3090 with SD 2.0.
LI_SCHEDULES = {
    "cifar10": dict(name="Li et al. CIFAR-10", n_classes=10, n_samples=[50, 500], to_keep=[5, 1], li_seconds=30.0),
    "imagenet": dict(name="Li et al. ImageNet", n_classes=1000, n_samples=[50, 100, 500, 1000], to_keep=[500, 50, 10, 1], li_seconds=1000.0),
}

TARGETS = {
    "engine_vs_reference": (3.0, "engine >= 3x the reference loop's evaluations/s at equal work (preset:sd2-base, Li's CIFAR-10 schedule)"),
    "mfu": (0.5, "best backend >= 50% of the measured bf16 matmul rate at batch >= 64 on preset:sd2-base"),
    "kernel_bandwidth": (0.8, "fused kernels >= 80% of the device-to-device copy bandwidth (SD latents, Q 64-256)"),
    "engine_overhead": (0.05, "engine overhead < 5% over bare denoiser calls at the same batch size"),
}


def spec_peak(device_name: str) -> tuple[float | None, str]:
    up = device_name.upper()
    for key, tflops, source in SPEC_BF16_TFLOPS:
        if key in up:
            return tflops, source
    return None, f"no datasheet peak on file for {device_name!r}"


class Recorder:
    """Appends one JSON object per line to ``path``; every line is flushed and synced before returning."""

    def __init__(self, path: str | Path, section: str):
        self.path = Path(path)
        self.section = section

    def add(self, kind: str, **fields) -> dict:
        rec = {"section": self.section, "kind": kind, **fields}
        line = json.dumps(rec, default=_jsonable)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        return rec

    # Typed constructors: the sections and the tests build records through these, so the schema lives here.
    def ceiling(self, name: str, value: float, unit: str, detail: str) -> dict:
        return self.add("ceiling", name=name, value=value, unit=unit, detail=detail)

    def kernel(self, op: str, latent: str, shape, dtype: str, q: int, fused_ms: float | None, eager_ms: float, nbytes: int, max_abs_diff: float | None) -> dict:
        return self.add("kernel", op=op, latent=latent, shape=list(shape), dtype=dtype, Q=q, fused_ms=fused_ms, eager_ms=eager_ms, nbytes=nbytes, max_abs_diff=max_abs_diff)

    def flops(self, model: str, batch: int, flops: float, where: str) -> dict:
        return self.add("flops", model=model, batch=batch, flops=flops, where=where)

    def denoiser(self, model: str, variant: str, dtype: str, batch: int, timing: dict, flops: float | None, compile_s: float | None = None) -> dict:
        return self.add("denoiser", model=model, variant=variant, dtype=dtype, batch=batch, flops=flops, compile_s=compile_s, **timing)

    def step(self, model: str, dtype: str, batch: int, kernels: str, step_ms: float, denoise_ms: float) -> dict:
        return self.add("step", model=model, dtype=dtype, batch=batch, kernels=kernels, step_ms=step_ms, denoise_ms=denoise_ms)

    def engine(self, model: str, system: str, policy: str, images: int, evals: int, seconds: float, labels: list[int], warmup_s: float, batch_size: int, **extra) -> dict:
        return self.add("engine", model=model, system=system, policy=policy, images=images, evals=evals, seconds=seconds, labels=labels, warmup_s=warmup_s, batch_size=batch_size, **extra)

    def bare(self, model: str, dtype: str, batch: int, ms: float) -> dict:
        return self.add("bare", model=model, dtype=dtype, batch=batch, ms=ms)

    def slice(self, model: str, schedule: str, classes: int, policy: str, evals: int, seconds: float) -> dict:
        return self.add("slice", model=model, schedule=schedule, classes=classes, policy=policy, evals=evals, seconds=seconds)

    def profile(self, target: str, what: str, top: list[dict], sort_key: str) -> dict:
        return self.add("profile", target=target, what=what, top=top, sort_key=sort_key)

    def tests(self, **fields) -> dict:
        return self.add("tests", **fields)

    def not_run(self, what: str, reason: str) -> dict:
        return self.add("not_run", what=what, reason=reason)

    def note(self, text: str) -> dict:
        return self.add("note", text=text)

    def error(self, text: str) -> dict:
        return self.add("error", text=text)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a section killed mid-write) is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _r(x, nd=4):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def _sig(x, digits=4):
    """``x`` rounded to ``digits`` significant figures (None for None or non-finite)."""
    if x is None or not math.isfinite(float(x)) or float(x) == 0:
        return _r(x)
    return round(float(x), digits - 1 - math.floor(math.log10(abs(float(x)))))


def finalize(records: list[dict], meta: dict, sections: dict) -> dict:
    """The result file's content from the raw records (pure; also used on synthetic records by the tests)."""
    by = {}
    for r in records:
        by.setdefault(r["kind"], []).append(r)
    ceil = {r["name"]: r for r in by.get("ceiling", [])}
    copy_gbs = ceil["copy"]["value"] if "copy" in ceil else None
    mm_bf16 = ceil["matmul_bf16"]["value"] if "matmul_bf16" in ceil else None
    peak, peak_src = spec_peak(meta.get("device", ""))
    ceilings = {
        # 4 significant figures, not 1 decimal: a CPU's bf16 matmul (the --quick smoke run, a loaded
        # machine) can be under 0.05 TFLOP/s, which one decimal rounded to 0
        "copy_GBps": _sig(copy_gbs),
        "matmul_bf16_tflops": _sig(mm_bf16),
        "matmul_fp16_tflops": _sig(ceil["matmul_fp16"]["value"]) if "matmul_fp16" in ceil else None,
        "spec_bf16_tflops": peak,
        "spec_source": peak_src,
        "details": {k: v["detail"] for k, v in ceil.items()},
    }

    kernels = []
    for r in by.get("kernel", []):
        fused_gbs = r["nbytes"] / (r["fused_ms"] * 1e-3) / 1e9 if r.get("fused_ms") else None
        eager_gbs = r["nbytes"] / (r["eager_ms"] * 1e-3) / 1e9
        kernels.append(
            {
                **{k: r[k] for k in ("op", "latent", "shape", "dtype", "Q", "fused_ms", "eager_ms", "nbytes", "max_abs_diff")},
                "fused_GBps": _r(fused_gbs, 1),
                "eager_GBps": _r(eager_gbs, 1),
                "speedup": _r(r["eager_ms"] / r["fused_ms"], 2) if r.get("fused_ms") else None,
                "fraction_of_copy": _r(fused_gbs / copy_gbs, 3) if fused_gbs and copy_gbs else None,
            }
        )

    flops_of = {(r["model"], r["batch"]): r["flops"] for r in by.get("flops", [])}
    denoisers = []
    for r in by.get("denoiser", []):
        flops = r.get("flops") or flops_of.get((r["model"], r["batch"]))
        s = r["ms"] * 1e-3
        achieved = flops / s / 1e12 if flops else None
        denoisers.append(
            {
                **{k: r.get(k) for k in ("model", "variant", "dtype", "batch", "ms", "ms_min", "ms_max", "calls", "warmup_s", "compile_s", "rel_diff_vs_eager")},
                "flops_per_call": flops,
                "evals_per_s": _r(r["batch"] / s, 1),
                "achieved_tflops": _r(achieved, 1),
                "mfu_vs_matmul": _r(achieved / mm_bf16, 3) if achieved and mm_bf16 else None,
                "mfu_vs_spec": _r(achieved / peak, 3) if achieved and peak else None,
            }
        )

    steps = [{**{k: r[k] for k in ("model", "dtype", "batch", "kernels", "step_ms", "denoise_ms")}, "kernel_share": _r((r["step_ms"] - r["denoise_ms"]) / r["step_ms"], 4)} for r in by.get("step", [])]

    engine = _engine_summary(by)
    per_image = _per_image(by, engine)
    tests = by.get("tests", [{}])[-1] or None
    profiles = [{k: r[k] for k in ("target", "what", "top", "sort_key")} for r in by.get("profile", [])]
    payload = {
        "benchmark": "gpu",
        "schema": SCHEMA,
        **meta,
        "sections": sections,
        "ceilings": ceilings,
        "tests": tests,
        "kernels": kernels,
        "flops": [{k: r[k] for k in ("model", "batch", "flops", "where")} for r in by.get("flops", [])],
        "denoisers": denoisers,
        "steps": steps,
        "engine": engine,
        "per_image": per_image,
        "profiles": profiles,
        "not_run": [{"what": r["what"], "reason": r["reason"]} for r in by.get("not_run", [])],
        "notes": [r["text"] for r in by.get("note", [])],
        "errors": [{"section": r["section"], "text": r["text"]} for r in by.get("error", [])],
    }
    payload["targets"] = check_targets(payload)
    return payload


def _engine_summary(by: dict) -> dict | None:
    runs = {r["system"]: r for r in by.get("engine", [])}
    if not runs:
        return None
    out = {}
    for name, r in runs.items():
        out[name] = {
            **{k: r[k] for k in ("model", "policy", "images", "evals", "seconds", "warmup_s", "batch_size")},
            "evals_per_s": _r(r["evals"] / r["seconds"], 1) if r["seconds"] else None,
            "seconds_per_image": _r(r["seconds"] / r["images"], 3) if r["images"] else None,
            "dtype": r.get("dtype"),
            "backend": r.get("backend"),
            "kernels": r.get("kernels"),
            "batch_fill": r.get("batch_fill"),
        }
    ref, eng = runs.get("reference"), runs.get("engine")
    if ref and eng:
        out["same_work"] = ref["evals"] / ref["images"] == eng["evals"] / eng["images"]
        n = min(len(ref["labels"]), len(eng["labels"]))
        out["labels_agree"] = f"{sum(a == b for a, b in zip(ref['labels'][:n], eng['labels'][:n]))}/{n}"
        out["ratio_evals_per_s"] = _r((eng["evals"] / eng["seconds"]) / (ref["evals"] / ref["seconds"]), 3)
    bare = [r for r in by.get("bare", []) if eng and r["batch"] == eng["batch_size"] and r["model"] == eng["model"]]
    if eng and bare:
        b = bare[-1]
        full_batches = eng["evals"] / b["batch"]
        out["bare_ms_per_batch"] = b["ms"]
        out["overhead_vs_bare"] = _r(eng["seconds"] / (b["ms"] * 1e-3 * full_batches) - 1, 4)
    return out


def _per_image(by: dict, engine: dict | None) -> list[dict]:
    out = []
    runs = {r["system"]: r for r in by.get("engine", [])}
    for system in ("engine", "reference"):
        if engine and system in engine:
            e, sch = engine[system], LI_SCHEDULES.get(runs[system].get("schedule"))
            out.append(
                {
                    "schedule": sch["name"] if sch else f"CPU smoke schedule ({e['policy']})",
                    "system": system,
                    "model": e["model"],
                    "classes": sch["n_classes"] if sch else None,
                    "evals_per_image": e["evals"] / e["images"],
                    "seconds_per_image": e["seconds_per_image"],
                    "how": f"measured: {e['images']} whole image(s)",
                    "li_rtx3090_s": sch["li_seconds"] if sch else None,
                }
            )
    for r in by.get("slice", []):
        sch = LI_SCHEDULES[r["schedule"]]
        total = schedule_evals(sch)
        rate = r["evals"] / r["seconds"]
        out.append(
            {
                "schedule": sch["name"],
                "system": "engine",
                "model": r["model"],
                "classes": sch["n_classes"],
                "evals_per_image": total,
                "seconds_per_image": _r(total / rate, 2),
                "how": f"extrapolated: {r['evals']} evaluations measured ({r['policy']}, {r['classes']} classes) at {rate:.0f} evals/s, times {total}",
                "li_rtx3090_s": sch["li_seconds"],
            }
        )
    return out


def schedule_evals(sch: dict) -> int:
    from diffcls_fast.engine.policies.stages import stage_evaluations

    return stage_evaluations(1000, sch["n_samples"], sch["to_keep"], sch["n_classes"])


def check_targets(p: dict) -> list[dict]:
    """Each target of issue 11: its value, and met True/False, or None where it was not measured."""
    out = []

    def add(key, value, detail, higher_is_better=True):
        thr, text = TARGETS[key]
        met = None if value is None else (value >= thr if higher_is_better else value < thr)
        out.append({"target": key, "text": text, "threshold": thr, "value": value, "met": met, "detail": detail})

    e = p.get("engine") or {}
    ratio = e.get("ratio_evals_per_s") if e.get("same_work") and (e.get("engine") or {}).get("model") == "preset:sd2-base" else None
    add("engine_vs_reference", ratio, f"{e.get('labels_agree', '?')} labels agree" if ratio is not None else "not measured on preset:sd2-base")
    rows = [d for d in p.get("denoisers", []) if d["model"] == "preset:sd2-base" and d["batch"] >= 64 and d.get("mfu_vs_matmul") is not None]
    best = max(rows, key=lambda d: d["mfu_vs_matmul"]) if rows else None
    add("mfu", best["mfu_vs_matmul"] if best else None, f"{best['variant']} {best['dtype']} batch {best['batch']}, {best['achieved_tflops']} TFLOP/s" if best else "not measured")
    ks = [k for k in p.get("kernels", []) if k["latent"] == "sd" and 64 <= k["Q"] <= 256 and k.get("fraction_of_copy") is not None]
    worst = min(ks, key=lambda k: k["fraction_of_copy"]) if ks else None
    add("kernel_bandwidth", worst["fraction_of_copy"] if worst else None, f"worst: {worst['op']} {worst['dtype']} Q={worst['Q']} at {worst['fused_GBps']} GB/s" if worst else "not measured")
    ov = e.get("overhead_vs_bare") if (e.get("engine") or {}).get("model") == "preset:sd2-base" else None
    detail = f"bare call {e.get('bare_ms_per_batch')} ms at batch {(e.get('engine') or {}).get('batch_size')}" if ov is not None else "not measured on preset:sd2-base"
    add("engine_overhead", ov, detail, higher_is_better=False)
    return out


def missed_targets(p: dict) -> list[str]:
    return [t["target"] for t in p["targets"] if t["met"] is False]


def write_payload(path: str | Path, payload: dict) -> Path:
    """Write atomically (a kill never leaves half a file)."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, p)
    return p


def _fmt(x, spec="") -> str:
    return "-" if x is None else format(x, spec)


def summary_lines(p: dict) -> list[str]:
    """The table printed at the end of a run (the device tool returns the end of the output)."""
    c = p["ceilings"]
    lines = [
        f"== bench.gpu: {p.get('device')} | torch {p.get('torch')} | {p.get('date')} | {'quick' if p.get('quick') else 'full'} ==",
        f"ceilings: copy {_fmt(c['copy_GBps'])} GB/s, bf16 matmul {_fmt(c['matmul_bf16_tflops'])} TFLOP/s (spec {_fmt(c['spec_bf16_tflops'])})",
        "sections: " + ", ".join(f"{k} {v['status']} ({v.get('seconds', 0):.0f}/{v.get('budget_s', 0):.0f} s)" for k, v in p["sections"].items()),
    ]
    t = p.get("tests")
    if t:
        lines.append(f"cuda tests: {t.get('summary', '?')}" + (f"; FAILED: {', '.join(t['failures'][:6])}" if t.get("failures") else ""))
    sd = [k for k in p["kernels"] if k["latent"] == "sd"]
    if sd:
        lines.append("kernels (SD latents): " + "; ".join(f"{k['op']} {k['dtype']} Q={k['Q']} {_fmt(k['fused_GBps'])} GB/s ({_fmt(k['fraction_of_copy'])} of copy)" for k in sd[:8]))
    if p["denoisers"]:
        lines.append(f"{'model':16s} {'variant':22s} {'dtype':8s} {'batch':>5s} {'ms':>9s} {'evals/s':>9s} {'TFLOP/s':>8s} {'MFU(mm)':>8s} {'compile s':>9s} {'vs eager':>8s}")
        for d in p["denoisers"]:
            nums = f"{d['ms']:9.2f} {_fmt(d['evals_per_s'], '9.1f')} {_fmt(d['achieved_tflops'], '8.1f')} {_fmt(d['mfu_vs_matmul'], '8.3f')}"
            comp = f"{_fmt(d.get('compile_s'), '9.1f')} {_fmt(d.get('rel_diff_vs_eager'), '8.1e')}"
            lines.append(f"{d['model']:16s} {d['variant']:22s} {d['dtype']:8s} {d['batch']:5d} {nums} {comp}")
    e = p.get("engine")
    if e:
        for s in ("reference", "engine"):
            if s in e:
                lines.append(f"{s}: {e[s]['model']} {e[s]['policy']} {e[s]['images']} image(s), {_fmt(e[s]['evals_per_s'])} evals/s, {_fmt(e[s]['seconds_per_image'])} s/image")
        lines.append(f"engine/reference evals/s {_fmt(e.get('ratio_evals_per_s'))}, labels agree {e.get('labels_agree', '-')}, overhead vs bare {_fmt(e.get('overhead_vs_bare'))}")
    for r in p["per_image"]:
        li = f" vs Li et al. {r['li_rtx3090_s']:.0f} s on an RTX 3090" if r["li_rtx3090_s"] else ""
        lines.append(f"{r['schedule']} ({r['system']}, {r['model']}): {_fmt(r['seconds_per_image'])} s/image [{r['how']}]{li}")
    for t in p["targets"]:
        mark = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"target {t['target']}: {mark} (value {_fmt(t['value'])}, threshold {t['threshold']}): {t['detail']}")
    for n in p["not_run"]:
        lines.append(f"not run: {n['what']}: {n['reason']}")
    for er in p["errors"]:
        lines.append(f"ERROR in {er['section']}: {er['text'].splitlines()[-1] if er['text'] else ''}")
    return lines


def plot(p: dict, path: str | Path) -> Path:
    """evaluations/s and MFU against batch size, one line per (model, variant, dtype)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    series: dict[tuple, list] = {}
    for d in p["denoisers"]:
        series.setdefault((d["model"], d["variant"], d["dtype"]), []).append(d)
    for key, rows in series.items():
        rows = sorted(rows, key=lambda d: d["batch"])
        label = " ".join(key).replace("preset:", "")
        axes[0].plot([d["batch"] for d in rows], [d["evals_per_s"] for d in rows], marker="o", label=label)
        if any(d["mfu_vs_matmul"] is not None for d in rows):
            axes[1].plot([d["batch"] for d in rows], [d["mfu_vs_matmul"] for d in rows], marker="o", label=label)
    for ax, ylab in zip(axes, ("denoiser evaluations / s", "MFU (vs measured bf16 matmul)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel(ylab)
        if series:
            ax.legend(fontsize=5)
    if not series:
        axes[0].text(0.5, 0.5, "no denoiser measurements", ha="center", transform=axes[0].transAxes)
    fig.suptitle(f"bench.gpu — {p.get('device')}, {p.get('date')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def median(xs):
    return statistics.median(xs) if xs else None
