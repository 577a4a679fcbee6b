"""Host work per denoiser batch as the label set grows: the engine with a denoiser that costs nothing.

python -m bench.host_scaling                       # 100, 1,000 and 10,000 classes, every policy
python -m bench.host_scaling --classes 1000 --policies ttest halving

What is timed is everything ``Engine.step`` does except the denoiser call: the
scheduler, every in-flight image's policy (take, observe, the pruning rule), the
runner's index arrays, noise rows, the fused noising and error kernels on a 4x4
latent (so they cost next to nothing), and the result bookkeeping. The denoiser
is the exact noise predictor of a class prototype plus Gaussian noise, the
prototypes close together (so the rules prune gradually, as on a real model),
and its own time is taken out of each step. The "right" counts printed only
show that every rule ran to an answer: this denoiser's difficulty is arbitrary
(halving's default band was chosen for real models, not for it), so they are
not accuracies.

Reported per (classes, policy): host milliseconds per 256-row batch (mean, the
figure that decides how long a GPU waits, and median and 90th percentile),
batches, evaluations per image, and the peak bytes of numpy state held by one
in-flight image's policy (score table, queues, running sums), and the most noise
rows it held at once: each is a latent (64 KB for SD's 4x64x64 float32), kept
only while the policy may still ask for its sample.

With ``--sleep-ms S`` (default 2) each configuration also runs with a
denoiser that sleeps S ms a batch, standing in for a device, without and with
the engine's overlap (``EngineConfig.overlap``: batch k+1 prepared while batch k
runs): wall milliseconds per batch, S + host without, about max(S, host) with.

The target (issue 29): at most 2 ms per batch at 1,000 classes, for every
policy. Timings depend on the CPU and on what else runs on it; the result file
records the device and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bench.common import device_tag, environment, write_json

BATCH = 256
T = 1000
SIZE = 4  # latent 1 x SIZE x SIZE


def zero_cost_bundle(n_classes: int, noise: float = 0.1, separation: float = 0.1, seed: int = 0, sleep_ms: float = 0.0):
    """A weightless :class:`ModelBundle` of ``n_classes`` prototypes (see the module docstring), its
    prototypes, and a one-item list accumulating the denoiser's own seconds. ``sleep_ms``: each call
    also sleeps that long (a device batch, for the overlap measurement)."""
    from diffcls_fast.models.bundle import ModelBundle

    gen = torch.Generator().manual_seed(seed)
    # Prototypes close together (a shared base, small class parts): the rules need many samples to separate them.
    base = torch.rand((1, 1, SIZE, SIZE), generator=gen) - 0.5
    protos = base + separation * (torch.rand((n_classes, 1, SIZE, SIZE), generator=gen) - 0.5)
    acp = torch.linspace(0.999, 0.01, T, dtype=torch.float64)
    a_tab, b_tab = acp.sqrt().float(), (1 - acp).sqrt().float()
    spent = [0.0]

    def denoise(x_t, t, cond):
        t0 = time.perf_counter()
        a, b = a_tab[t].view(-1, 1, 1, 1), b_tab[t].view(-1, 1, 1, 1)
        exact = (x_t - a * protos[cond]) / b
        out = exact + torch.randn(exact.shape, generator=gen) * noise
        if sleep_ms:
            time.sleep(sleep_ms / 1e3)  # a device batch: the thread waits and the host is free
        spent[0] += time.perf_counter() - t0
        return out

    bundle = ModelBundle(
        name="zero-cost",
        cond_kind="class",
        latent_shape=(1, SIZE, SIZE),
        image_resolution=SIZE,
        image_channels=1,
        alphas_cumprod=acp,
        prediction_type="epsilon",
        device=torch.device("cpu"),
        dtype=torch.float32,
        fingerprint=f"zero-cost-{n_classes}-{seed}",
        text_fingerprint="",
        encode_images=lambda pixels: torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in pixels]),
        encode_prompts=lambda prompts: torch.tensor([int(p) for p in prompts], dtype=torch.long),
        denoise=denoise,
        family="class-unet",
        class_names=[str(c) for c in range(n_classes)],
        default_prompts=[str(c) for c in range(n_classes)],
    )
    return bundle, protos, spent


def policy_options(policy: str, n_classes: int) -> dict:
    """Each policy at its defaults, except ``adaptive``: Li et al.'s ImageNet stages (50, 100, 500, 1000
    grid points) keeping half, a twentieth, a hundredth of the classes, then one (500, 50, 10, 1 at 1,000)."""
    if policy == "adaptive":
        keep = [max(1, n_classes // 2), max(1, n_classes // 20), max(1, n_classes // 100), 1]
        return {"n_samples": [50, 100, 500, 1000], "to_keep": keep}
    return {}


def policy_bytes(policy) -> int:
    """Bytes of the numpy arrays a policy holds (its score table's included)."""
    total = 0
    for obj in (policy, getattr(policy, "table", None)):
        for v in vars(obj).values() if obj is not None else ():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, (tuple, list)):
                total += sum(a.nbytes for a in v if isinstance(a, np.ndarray))
    return total


def measure(
    policy: str, n_classes: int, images: int, max_inflight: int = 64, sleep_ms: float = 0.0, overlap: bool = False
) -> dict:
    from diffcls_fast.engine.core import Engine
    from diffcls_fast.engine.noise import NoiseBank
    from diffcls_fast.engine.options import EngineConfig, RequestOptions

    bundle, protos, spent = zero_cost_bundle(n_classes, sleep_ms=sleep_ms)
    cfg = EngineConfig.build(bundle, batch_size=BATCH, max_inflight=max_inflight, use_cache=False, overlap=overlap)
    bank = NoiseBank(bundle.latent_shape, 0)
    opts = RequestOptions.build(bundle, "l2", bank, policy, policy_options(policy, n_classes))
    engine = Engine(bundle, cfg, opts)
    truth = [(i * 7919) % n_classes for i in range(images)]
    engine.submit([protos[c].numpy() for c in truth], [str(c) for c in range(n_classes)])
    host, peak, correct, rows_held = [], 0, 0, 0
    t_start = time.perf_counter()
    while engine.has_work:
        before = spent[0]
        t0 = time.perf_counter()
        events = engine.step()
        host.append(time.perf_counter() - t0 - (spent[0] - before))
        for st in engine.states.values():
            peak = max(peak, policy_bytes(st.policy))
            rows_held = max(rows_held, len(st.noise))
        correct += sum(r.label == truth[i] for _, i, r in events)
    wall = time.perf_counter() - t_start
    engine.close()
    ms = np.array(host) * 1e3
    stats = engine.stats
    return {
        "policy": policy,
        "options": policy_options(policy, n_classes),
        "classes": n_classes,
        "images": images,
        "batches": stats.batches,
        "rows_per_batch": stats.rows / max(1, stats.batches),
        "evals_per_image": stats.rows / images,
        "host_ms_mean": float(ms.mean()),
        "host_ms_median": float(np.median(ms)),
        "host_ms_p90": float(np.percentile(ms, 90)),
        "denoiser_ms_mean": spent[0] * 1e3 / max(1, stats.batches),
        "policy_bytes_peak": int(peak),
        "noise_rows_peak": int(rows_held),
        "correct": int(correct),
        "wall_seconds": wall,
        "wall_ms_per_batch": wall * 1e3 / max(1, stats.batches),
    }


DEFAULT_IMAGES = {100: 16, 1000: 4, 10000: 1}
# halving spends about 2 evaluations per class an image: more images, so that the mean covers 100+ batches
IMAGES_FACTOR = {"halving": 16}
OVERLAP_IMAGES = {"halving": 16}  # the others: one image (hundreds of batches at 1,000 classes)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--policies", nargs="+", default=["exhaustive", "adaptive", "ttest", "halving"])
    ap.add_argument("--images", type=int, default=None, help="images per configuration (default: 16, 4, 1 by size)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: host work is single-threaded)")
    ap.add_argument(
        "--sleep-ms", type=float, default=2.0, help="the overlap runs' denoiser sleeps this long a batch (0: skip them)"
    )
    ap.add_argument("--no-save", action="store_true", help="print, do not write bench/results/")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for c in args.classes:
        for p in args.policies:
            r = measure(p, c, args.images or DEFAULT_IMAGES.get(c, 4) * IMAGES_FACTOR.get(p, 1))
            rows.append(r)
            print(
                f"{c:>6} classes  {p:<10} host {r['host_ms_mean']:6.2f} ms/batch mean"
                f" ({r['host_ms_median']:.2f} median, {r['host_ms_p90']:.2f} p90)  {r['batches']:>6} batches"
                f"  {r['evals_per_image']:>9.0f} evals/image  policy state {r['policy_bytes_peak'] / 1e6:.2f} MB"
                f"  noise rows {r['noise_rows_peak']}"
                f"  {r['correct']}/{r['images']} right",
                flush=True,
            )
    overlap_rows = []
    if args.sleep_ms:
        # A denoiser that sleeps sleep_ms a batch stands in for a device: off, a batch costs sleep + host;
        # with overlap the host's work for the next batch hides under the sleep.
        for c in args.classes:
            for p in args.policies:
                row = {"policy": p, "classes": c, "sleep_ms": args.sleep_ms}
                for mode in (False, True):
                    r = measure(p, c, OVERLAP_IMAGES.get(p, 1), sleep_ms=args.sleep_ms, overlap=mode)
                    row["on" if mode else "off"] = {
                        k: r[k] for k in ("wall_ms_per_batch", "batches", "evals_per_image", "correct")
                    }
                overlap_rows.append(row)
                print(
                    f"{c:>6} classes  {p:<10} sleep {args.sleep_ms:g} ms: wall"
                    f" {row['off']['wall_ms_per_batch']:.2f} ms/batch without overlap,"
                    f" {row['on']['wall_ms_per_batch']:.2f} with",
                    flush=True,
                )
    payload = {
        "benchmark": "host_scaling",
        **environment("cpu"),
        "batch": BATCH,
        "load_average": os.getloadavg(),
        "results": rows,
        "overlap": overlap_rows,
    }
    if not args.no_save:
        p = write_json(f"host_scaling_{device_tag('cpu')}_{payload['date']}.json", payload)
        print(f"wrote {p}")
    return payload


if __name__ == "__main__":
    main()
