"""GB/s of the fused kernels against the eager torch chain (``kernels/reference.py``).

    python -m bench.kernels              # on a GPU: SD (4x64x64) and DiT (4x32x32) latents, Q 32..1024, fp16/bf16
    TRITON_INTERPRET=1 python -m bench.kernels --smoke   # CPU: tiny shapes under the interpreter (CI keeps it alive)

Bytes are the logical traffic of one pass: make_noisy reads x0 and eps rows and
writes x_t (3 x Q x E elements); query_errors reads eps_hat and eps rows
(2 x Q x E). The device's copy bandwidth (a large device-to-device copy) is
measured in the same run and reported beside them. Writes
bench/results/kernels_<device>_<date>.json (not in smoke mode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench.common import device_tag, environment, write_json
from diffcls_fast.kernels import reference


def _bench(fn, device: str, reps: int) -> float:
    """Median milliseconds per call."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), device, reps=5)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU interpreter allowed, no result file")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("no GPU: run with TRITON_INTERPRET=1 and --smoke")
    from diffcls_fast.kernels.fused_errors import query_errors as tri_errors
    from diffcls_fast.kernels.fused_noise import make_noisy as tri_noisy

    if a.smoke:
        latents = {"tiny": (4, 8, 8)}
        qs = [4, 16]
        dtypes = [torch.float16]
        reps = 2
    else:
        latents = {"sd": (4, 64, 64), "dit": (4, 32, 32)}
        qs = [32, 64, 128, 256, 512, 1024]
        dtypes = [torch.float16, torch.bfloat16]
        reps = 20
    copy_gbs = copy_bandwidth(device, 1 << 20 if a.smoke else 1 << 30)
    print(f"device copy bandwidth: {copy_gbs:.1f} GB/s")
    rows = []
    for lname, shape in latents.items():
        e = shape[0] * shape[1] * shape[2]
        for dtype in dtypes:
            for q in qs:
                g = torch.Generator().manual_seed(q)
                n_img, n_noise = max(1, q // 8), max(1, q // 4)  # queries share images and noise rows, as in the engine
                x0 = torch.randn(n_img, *shape, generator=g).to(device, dtype)
                eps = torch.randn(n_noise, *shape, generator=g).to(device, dtype)
                img_idx = torch.randint(0, n_img, (q,), generator=g).to(device)
                noise_idx = torch.randint(0, n_noise, (q,), generator=g).to(device)
                a_ = torch.rand(q, generator=g).to(device)
                b_ = (1 - a_ * a_).sqrt()
                out = torch.empty(q, *shape, dtype=dtype, device=device)
                hat = torch.randn(q, *shape, generator=g).to(device, dtype)
                size = torch.finfo(dtype).bits // 8
                for op, fused, eager, nbytes in (
                    (
                        "make_noisy",
                        lambda: tri_noisy(x0, eps, img_idx, noise_idx, a_, b_, out=out),
                        lambda: reference.make_noisy(x0, eps, img_idx, noise_idx, a_, b_, out=out),
                        3 * q * e * size,
                    ),
                    (
                        "query_errors",
                        lambda: tri_errors(hat, eps, noise_idx),
                        lambda: reference.query_errors(hat, eps, noise_idx),
                        2 * q * e * size,
                    ),
                ):
                    t_f = _bench(fused, device, reps)
                    t_e = _bench(eager, device, reps)
                    gbs_f = nbytes / (t_f * 1e-3) / 1e9
                    gbs_e = nbytes / (t_e * 1e-3) / 1e9
                    row = {
                        "op": op,
                        "latent": lname,
                        "shape": list(shape),
                        "dtype": str(dtype).removeprefix("torch."),
                        "Q": q,
                        "fused_ms": round(t_f, 5),
                        "eager_ms": round(t_e, 5),
                        "fused_GBps": round(gbs_f, 1),
                        "eager_GBps": round(gbs_e, 1),
                        "speedup": round(t_e / t_f, 2),
                        "fraction_of_copy_bw": round(gbs_f / copy_gbs, 3),
                    }
                    rows.append(row)
                    print(
                        f"{op:13s} {lname:4s} {row['dtype']:8s} Q={q:5d}  fused {gbs_f:8.1f} GB/s  eager {gbs_e:8.1f}"
                        f" GB/s  x{row['speedup']:.2f}  {100 * row['fraction_of_copy_bw']:.0f}% of copy"
                    )
    if a.smoke:
        print("smoke run: interpreter timings are not performance numbers; no result file written")
        return
    env = environment(device)
    p = write_json(
        f"kernels_{device_tag(device)}_{env['date']}.json",
        {"benchmark": "kernels", **env, "copy_GBps": round(copy_gbs, 1), "results": rows},
    )
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
