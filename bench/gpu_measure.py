"""Timers, ceilings, FLOP counts and profiles for the GPU suite (they also run on the CPU)."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 2, target_s: float = 0.6, min_calls: int = 3, max_calls: int = 50, deadline: float | None = None) -> dict:
    """Median milliseconds of ``fn()``: ``warmup`` untimed calls (their seconds reported), then enough
    timed calls for about ``target_s`` seconds (at least ``min_calls``, fewer only past ``deadline``).

    On CUDA each call is timed with device events and synchronized, as the engine synchronizes once
    per batch; on the CPU with the host clock.
    """
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    est = warm / warmup if warmup else None
    times: list[float] = []
    n = max_calls if est is None else max(min_calls, min(max_calls, int(target_s / max(est, 1e-6))))
    for _ in range(n):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        if deadline is not None and time.time() > deadline:
            break
        if est is None and sum(times) > target_s * 1e3 and len(times) >= min_calls:
            break
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "calls": len(times), "warmup_s": round(warm, 4)}


def bench_ms(fn, device: torch.device) -> float:
    """Median ms of a short op: triton's do_bench on CUDA (it flushes the L2 between calls), else the host clock."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return time_fn(fn, device, warmup=1, target_s=0.2, min_calls=3)["ms"]


def copy_gbps(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (random fp16 data)."""
    src = torch.randn(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """Dense n x n x n matmul rate on random data: 3 warm-ups, median of 10 timed products."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b, out=c), device, warmup=3, target_s=0.0, min_calls=10, max_calls=10)
    return 2 * n**3 / (t["ms"] * 1e-3) / 1e12


def count_flops(fn) -> float:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them
    (matmuls, convolutions, attention; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def preset_flops(name: str, batch: int, dtype: torch.dtype = torch.float16) -> float:
    """FLOPs of one denoiser call of ``preset:name`` at ``batch`` rows, counted on the meta device
    (no memory, no device time: the count depends only on shapes)."""
    from diffcls_fast.models.presets import PRESETS, preset_network

    p = PRESETS[name]
    net = preset_network(name, device="meta", dtype=dtype)
    with torch.device("meta"):
        if p["kind"] == "unet":
            hw = int(p["unet"]["sample_size"])
            x = torch.randn(batch, int(p["unet"]["in_channels"]), hw, hw, dtype=dtype)
            c = torch.randn(batch, *p["text"], dtype=dtype)
            t = torch.randint(0, 1000, (batch,))
            return count_flops(lambda: net(x, t, encoder_hidden_states=c))
        hw = int(p["net"]["sample_size"])
        x = torch.randn(batch, int(p["net"]["in_channels"]), hw, hw, dtype=dtype)
        t = torch.randint(0, 1000, (batch,))
        c = torch.randint(0, 1000, (batch,))
        return count_flops(lambda: net(x, t, class_labels=c))


def random_inputs(model, batch: int, seed: int = 0):
    """(x_t, t, cond) of ``batch`` rows for ``model.denoise``: random latents and timesteps, conditions
    drawn from 10 prompts (text) or random class ids. Never zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.latent_shape, generator=g).to(model.device, model.dtype)
    t = torch.randint(0, model.num_timesteps, (batch,), generator=g).to(model.device)
    if model.cond_kind == "class":
        c = torch.randint(0, max(1, len(model.class_names)), (batch,), generator=g).to(model.device)
    else:
        names = model.class_names[:10] if len(model.class_names) >= 2 else [f"thing {i}" for i in range(10)]
        prompts = model.default_prompts[: len(names)] if model.default_prompts else [model.prompt_template.format(n) for n in names]
        table = model.encode_prompts(prompts)
        c = table[torch.randint(0, len(prompts), (batch,), generator=g).to(table.device)]
    return x, t, c


def _self_device_us(e) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(e, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_top(fn, device: torch.device, calls: int = 3, top: int = 15) -> dict:
    """torch.profiler over ``calls`` calls of ``fn``: the top ops by self device time (CUDA) and by
    self CPU time, as lists of {name, self_ms, calls}."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()  # warm: the profile shows the steady state
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    evs = list(prof.key_averages())

    def rows(key):
        ranked = sorted(evs, key=key, reverse=True)
        return [{"name": e.key[:140], "self_ms": round(key(e) / 1e3, 4), "calls": int(e.count)} for e in ranked[:top] if key(e) > 0]

    out = {"cpu": rows(lambda e: float(e.self_cpu_time_total))}
    if device.type == "cuda":
        out["device"] = rows(_self_device_us)
    return out


def format_top(title: str, top: list[dict]) -> str:
    lines = [title, f"{'self ms':>10s} {'calls':>7s}  name"]
    lines += [f"{r['self_ms']:10.3f} {r['calls']:7d}  {r['name']}" for r in top]
    return "\n".join(lines) + "\n"
