"""diffcls-run (C++, AOTInductor) vs diffcls-fast classify (Python) on held-out digits, CPU.

python -m bench.native_runner [--images 20] [--build build] [--packages]

Measures, with the same policy (ttest defaults), seed and saved noise:

* warm per-image latency, one image at a time: diffcls-run (its per-image seconds, the first
  image of the run excluded as warm-up), the Python engine in-process on eager torch, and the
  Python engine in-process on the same AOTInductor package (``--backend aoti``), which separates
  the runtime from the engine's Python overhead;
* process start-up: the wall time of one command classifying one image, minus that image's warm
  latency (model/package loading, imports);
* a batch of all images in one command (the Python engine packs many images into each batch);
* with ``--packages``: compile time and per-call latency of one dynamic-batch package per batch
  range vs one static package per bucket.

Results go to bench/results/native_runner_digits_cpu_<date>.json. The CPU may be shared: the
load average before and after is recorded, and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment, write_json

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32  # the export's largest batch (one package, dynamic 2..32), the Python engine's largest bucket too


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {
        "median_ms": round(1e3 * statistics.median(xs), 2),
        "p90_ms": round(1e3 * xs[int(0.9 * (len(xs) - 1))], 2),
        "n": len(xs),
    }


THREADS = {"n": 1}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(THREADS["n"])}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )


def _native(build: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(build / "diffcls-run"), *map(str, args), "--threads", str(THREADS["n"])],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def per_image(args, export: Path, work: Path) -> dict:
    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.data.digits import load_split
    from diffcls_fast.engine.noise import load_noise_file
    from diffcls_fast.export import apply_backend
    from diffcls_fast.export.aoti_export import save_pixels
    from diffcls_fast.images import preprocess

    pil, _, _ = load_split("heldout")
    pil = pil[: args.images]
    pix = torch.stack([preprocess(im, 8, 1) for im in pil])
    save_pixels(pix, work / "all.safetensors")
    save_pixels(torch.cat([pix[:1], pix]), work / "warm_all.safetensors")  # image 0 twice: the first is the warm-up
    save_pixels(pix[0], work / "one.safetensors")
    pil[0].save(work / "one.png")
    for i, im in enumerate(pil):
        im.save(work / f"d{i:02d}.png")
    noise_path = export / "noise.safetensors"
    noise = load_noise_file(noise_path)[0]

    out: dict = {}
    # -- native, one image at a time inside one process (its own per-image seconds) -------------
    r = _native(args.build, export, work / "warm_all.safetensors", "--json")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    out["native"] = _ms([x["seconds"] for x in rows[1:]]) | {
        "evaluations_per_image": statistics.mean(x["evaluations"] for x in rows[1:])
    }
    out["native"]["evaluations_spent_per_image"] = statistics.mean(x["evaluations_spent"] for x in rows[1:])
    labels_native = [x["label_index"] for x in rows[1:]]

    # -- Python engine in-process, one image per classify() call ----------------------------------
    model = load_model("digits", device="cpu")
    for name, bundle in (
        ("python_torch", model),
        ("python_aoti", apply_backend(model, "aoti", batch_sizes=[8, 16, BATCH], cache_dir=args.cache_dir)),
    ):
        clf = DiffusionClassifier(bundle, "ttest", batch_size=BATCH, noise=noise, seed=0)
        clf.classify([pil[0]])  # warm-up
        times, labels, evals, spent = [], [], [], []
        for im in pil:
            t0 = time.perf_counter()
            res = clf.classify([im])[0]
            times.append(time.perf_counter() - t0)
            labels.append(res.label)
            evals.append(res.evaluations)
            spent.append(res.evaluations_spent)
        out[name] = _ms(times) | {
            "evaluations_per_image": statistics.mean(evals),
            "evaluations_spent_per_image": statistics.mean(spent),
            "same_labels_as_native": labels == labels_native,
        }

    # -- process start-up: one command, one image ---------------------------------------------------
    cold_native = [
        _wall(lambda: _native(args.build, export, work / "one.safetensors")) for _ in range(args.startup_repeats)
    ]
    cold_python = [
        _wall(
            lambda: _cli(
                "classify", work / "one.png", "--noise-path", noise_path, "--batch-size", BATCH, "--device", "cpu"
            )
        )
        for _ in range(args.startup_repeats)
    ]
    lat_native = out["native"]["median_ms"] / 1e3
    lat_python = out["python_torch"]["median_ms"] / 1e3
    out["startup"] = {
        "native_one_image_wall_s": round(statistics.median(cold_native), 3),
        "python_one_image_wall_s": round(statistics.median(cold_python), 3),
        "native_startup_s": round(statistics.median(cold_native) - lat_native, 3),
        "python_startup_s": round(statistics.median(cold_python) - lat_python, 3),
        "repeats": args.startup_repeats,
        "note": "wall of one command on one image minus that image's warm latency (the median above)",
    }
    # -- all images in one command -------------------------------------------------------------------
    pngs = [work / f"d{i:02d}.png" for i in range(len(pil))]
    out["batch_command"] = {
        "images": len(pil),
        "native_wall_s": round(_wall(lambda: _native(args.build, export, work / "all.safetensors")), 3),
        "python_wall_s": round(
            _wall(
                lambda: _cli("classify", *pngs, "--noise-path", noise_path, "--batch-size", BATCH, "--device", "cpu")
            ),
            3,
        ),
        "note": (
            "diffcls-run scores one image at a time; the Python engine packs the queries of many images into each batch"
        ),
    }
    return out


def packages(args, work: Path) -> dict:
    """One dynamic-batch package per range vs one static package per bucket: compile seconds, per-call ms."""
    from diffcls_fast import load_model
    from diffcls_fast.export.aoti_export import PackageRange, compile_package, load_package
    from diffcls_fast.export.spec import RawNetwork, spec_for

    model = load_model("digits", device="cpu")
    spec = spec_for(model)
    eager = RawNetwork(model.network, False).eval()
    plans = {
        "dynamic 2-63": PackageRange(2, 63),
        "dynamic 64-256": PackageRange(64, 256),
        "static 16": PackageRange(16, 16),
        "static 128": PackageRange(128, 128),
    }
    compiled, out = {}, {"compile_s": {}, "per_call_ms": {}}
    for name, rng in plans.items():
        path = work / f"pkg-{rng.lo}-{rng.hi}.pt2"
        # A fresh inductor cache per package: no compile reuses another's kernels.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{rng.lo}-{rng.hi}")
        out["compile_s"][name] = round(compile_package(model, rng, path), 1)
        compiled[name] = load_package(path)
    for b in (8, 16, 32, 63, 64, 128, 256):
        x = spec.sample_input(b, torch.device("cpu"), torch.float32)
        cands = {"eager": eager} | {n: r for n, r in compiled.items() if plans[n].lo <= b <= plans[n].hi}
        times: dict[str, list[float]] = {n: [] for n in cands}
        with torch.inference_mode():
            for fn in cands.values():
                fn(*x)
            for _ in range(args.calls):  # interleaved, so a busy moment hits every candidate alike
                for n, fn in cands.items():
                    t0 = time.perf_counter()
                    fn(*x)
                    times[n].append(time.perf_counter() - t0)
        out["per_call_ms"][str(b)] = {n: round(1e3 * statistics.median(v), 2) for n, v in times.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--build", type=Path, default=ROOT / "build", help="the CMake build folder holding diffcls-run")
    ap.add_argument(
        "--export",
        type=Path,
        default=ROOT / "bench" / "cache" / "aoti-digits",
        help="export folder (created when missing)",
    )
    ap.add_argument("--cache-dir", default=str(ROOT / "bench" / "cache"))
    ap.add_argument("--startup-repeats", type=int, default=3)
    ap.add_argument("--packages", action="store_true", help="also compare dynamic vs static packages (4 compiles)")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help=(
            "intra-op threads of every process (default 1: on a shared CPU two OpenMP threads spin against other jobs)"
        ),
    )
    ap.add_argument("--date", default=None, help="date in the file name (default: today)")
    args = ap.parse_args(argv)
    THREADS["n"] = args.threads
    torch.set_num_threads(args.threads)
    if not (args.build / "diffcls-run").is_file():
        raise SystemExit(f"{args.build}/diffcls-run not found; build it first (csrc/README.md)")
    load_before = os.getloadavg()
    export_s = None
    if not (args.export / "manifest.json").is_file():
        export_s = _wall(
            lambda: _cli(
                "export",
                "--format",
                "aoti",
                "--batch-sizes",
                BATCH,
                "--out",
                args.export,
                "--cache-dir",
                args.cache_dir,
                "--force",
            )
        )
    env = environment("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            **env,
            "bench": "native_runner",
            "model": "digits",
            "policy": "ttest(min=20, max=2000, p<0.002, 2-sided, t=stratified)",
            "batch": BATCH,
            "threads": torch.get_num_threads(),
            "export_seconds": None if export_s is None else round(export_s, 1),
            "per_image": per_image(args, args.export, Path(tmp)),
        }
        if args.packages:
            result["packages"] = packages(args, Path(tmp))
    result["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    date = args.date or env["date"]
    path = write_json(f"native_runner_digits_cpu_{date}.json", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
