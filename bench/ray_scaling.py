"""Ray Data scaling on this machine: images/s of 1 and 2 actors against one local process, same images.

python -m bench.ray_scaling [--images 64] [--policy ttest] [--repeats 3]

Configurations (Ray started with num_cpus = the machine's cores):
  local N threads  DiffusionClassifier.classify in this process with 1 and with torch's default threads, warmed up first
  ray 1x1          1 actor, 1 CPU (Ray sets OMP_NUM_THREADS=1 in it)
  ray 1x2          1 actor, 2 CPUs (2 threads)
  ray 2x1          2 actors, 1 CPU each
Each Ray figure is the wall time of the whole pipeline, actor start-up and model load included
(they are paid once per dataset), and is also given from the first result on ("steady").
Medians over --repeats. Every run's results are checked against the local run's, image by image.
Writes bench/results/ray_scaling_cpu_<date>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def _load() -> tuple[float, float, float]:
    return os.getloadavg()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--policy", default="ttest")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16, help="rows per map_batches call (default: 16)")
    a = ap.parse_args(argv)

    import ray

    from bench.common import environment, write_json
    from diffcls_fast import DiffusionClassifier
    from diffcls_fast.evaluate import load_eval_split
    from diffcls_fast.integrations.ray import classify_dataset

    images, _, _, _ = load_eval_split("digits", "heldout")
    arrays = [np.asarray(im) for im in images[: a.images]]
    clf = DiffusionClassifier("digits", a.policy, seed=0)
    clf.classify(arrays[:8])  # warm-up, not timed
    load_before = _load()
    threads = torch.get_num_threads()
    local, ref = {}, None
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            ref = clf.classify(arrays)
            times.append(time.perf_counter() - t0)
        local[n_threads] = times
    torch.set_num_threads(threads)
    evals = int(sum(r.evaluations_spent for r in ref))

    cores = os.cpu_count() or 2
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    results = [
        {
            "config": f"local {t} thread{'s' if t > 1 else ''}",
            "actors": 0,
            "threads": t,
            "seconds": v,
            "median_seconds": statistics.median(v),
        }
        for t, v in local.items()
    ]
    try:
        for actors, cpus in ((1, 1), (1, 2), (2, 1)):
            walls, steadies = [], []
            for _ in range(a.repeats):
                ds = ray.data.from_items(
                    [{"i": i, "image": x} for i, x in enumerate(arrays)],
                    override_num_blocks=max(1, len(arrays) // a.batch_size),
                )
                out = classify_dataset(
                    ds, "digits", policy=a.policy, concurrency=actors, num_cpus=cpus, batch_size=a.batch_size, seed=0
                )
                t0 = time.perf_counter()
                first, n, rows = None, 0, {}
                for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                    if first is None:
                        first, n_first = time.perf_counter(), len(batch["i"])
                    for k, i in enumerate(batch["i"]):
                        rows[int(i)] = (int(batch["label"][k]), batch["mean_errors"][k])
                    n += len(batch["i"])
                wall = time.perf_counter() - t0
                walls.append(wall)
                steadies.append((n - n_first) / (t0 + wall - first) if n > n_first else float("nan"))
                assert n == len(arrays), f"{n} rows for {len(arrays)} images"
                for i, r in enumerate(ref):  # identical to the local process, image by image
                    assert rows[i][0] == r.label and np.array_equal(rows[i][1], r.mean_errors, equal_nan=True), i
            results.append(
                {
                    "config": f"ray {actors}x{cpus}",
                    "actors": actors,
                    "cpus_per_actor": cpus,
                    "seconds": walls,
                    "median_seconds": statistics.median(walls),
                    "steady_images_per_second": [round(s, 3) for s in steadies],
                    "median_steady_images_per_second": round(statistics.median(steadies), 3),
                }
            )
    finally:
        ray.shutdown()
    for r in results:
        r["images_per_second"] = round(len(arrays) / r["median_seconds"], 3)
    base = next(r for r in results if r["config"] == "ray 1x1")["images_per_second"]
    for r in results:
        r["vs_ray_1x1"] = round(r["images_per_second"] / base, 3)
    env = environment("cpu")
    payload = {
        **env,
        "benchmark": "ray_scaling",
        "model": "digits",
        "policy": a.policy,
        "images": len(arrays),
        "evaluations": evals,
        "batch_size_rows": a.batch_size,
        "cores": cores,
        "ray": ray.__version__,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in _load()],
        "note": (
            "CPU shared with other jobs when loadavg exceeds the core count; Ray figures include actor start-up and"
            " model load (paid once per dataset)"
        ),
        "results": results,
    }
    path = write_json(f"ray_scaling_cpu_{env['date']}.json", payload)
    for r in results:
        extra = (
            f", steady {r['median_steady_images_per_second']:.2f} img/s"
            if "median_steady_images_per_second" in r
            else ""
        )
        print(
            f"{r['config']:>15}: {r['images_per_second']:.2f} img/s (median {r['median_seconds']:.1f} s{extra}),"
            f" x{r['vs_ray_1x1']:.2f} vs ray 1x1"
        )
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
