"""Held-out accuracy against mean evaluations per image, for every policy family.

    python -m bench.accuracy_vs_evals                               # digits, full held-out split (~15 CPU minutes)
    python -m bench.accuracy_vs_evals --model numbers --limit 100   # numbers, 1 pair per class (~40 CPU minutes)
    python -m bench.accuracy_vs_evals --limit 40 --quick            # smoke run
    python -m bench.accuracy_vs_evals --model numbers --backend aoti --tag numbers_1000 --resume \
        --only halving exhaustive-50                                # a long run in parts, in this order
    # the strictest t-test first: the others reuse its queries
    python -m bench.accuracy_vs_evals --model numbers --memo --only "ttest p<1e-4" "ttest p<2e-3" "ttest p<1e-2"
    # a long configuration saved every 100 images
    python -m bench.accuracy_vs_evals --model numbers --tag numbers_1000 --resume --chunk 100 \
        --only "adaptive 20 50 100 500"

Finishing a front on the H200 of the device tool (one call; the committed rows travel with
the working tree and are kept, the missing ones are run in fp32 without TF32, so the two
devices' rows compare)::

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
                "--target /tmp/site .whl/diffusers-*.whl "
                "&& export PYTHONPATH=/tmp/site:$PWD && mkdir -p $OUT/per_image "
                "&& cp bench/results/accuracy_vs_evals_numbers_heldout1000.json $OUT/ "
                "&& cp bench/results/per_image/accuracy_vs_evals_numbers_heldout1000.npz $OUT/per_image/ "
                "&& python3 -m bench.accuracy_vs_evals --model numbers --tag numbers_heldout1000 --resume "
                "--device cuda --batch-size 1024 --results-dir $OUT",
        carry=[".whl"], timeout_s=560)

then copy the three files back over the committed ones and run ``python -m bench.report``.

Writes bench/results/accuracy_vs_evals_<model>_<device>_<date>.{json,png}, or
accuracy_vs_evals_<tag>.{json,png} with --tag (a run that spans several days or
sessions resumes from the same file). Each row records the device, backend and dtype
it ran on, so a front finished on another machine says which rows came from where.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, device_tag, environment, other_weights, weights_of
from bench.score_memo import MemoClassifier, ScoreMemo
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.evaluate import load_eval_split
from diffcls_fast.export.backends import apply_backend

# successive halving candidates (rounds, keep, band); the default was chosen on the train split (bench.policy_search)
HALVING = [
    ([2, 4, 12], [10, 3, 1], [0.15, 0.6]),  # the default
    ([2, 4, 12], [10, 3, 1], [0.0, 1.0]),  # the same without the timestep band
    ([1, 3, 7], [10, 3, 1], [0.15, 0.6]),
    ([1, 3, 7], [20, 5, 1], [0.15, 0.6]),
    ([2, 4, 8], [10, 3, 1], [0.15, 0.6]),
]
DIGITS_CONFIGS = [
    ("exhaustive-5", "exhaustive", dict(n_grid=5)),
    ("exhaustive-10", "exhaustive", dict(n_grid=10)),
    ("exhaustive-20", "exhaustive", dict(n_grid=20)),
    ("exhaustive-50", "exhaustive", dict(n_grid=50)),
    ("adaptive 10 50 / 3 1", "adaptive", dict(n_samples=[10, 50], to_keep=[3, 1])),
    ("adaptive 20 100 / 5 1", "adaptive", dict(n_samples=[20, 100], to_keep=[5, 1])),
    ("adaptive 5 50 / 2 1", "adaptive", dict(n_samples=[5, 50], to_keep=[2, 1])),
    ("ttest p<1e-2 stratified", "ttest", dict(cutoff_pval=1e-2, t_order="stratified")),
    ("ttest p<2e-3 stratified", "ttest", dict(cutoff_pval=2e-3, t_order="stratified")),
    ("ttest p<1e-4 stratified", "ttest", dict(cutoff_pval=1e-4, t_order="stratified")),
    ("ttest p<1e-2 random", "ttest", dict(cutoff_pval=1e-2, t_order="random")),
    ("ttest p<2e-3 random", "ttest", dict(cutoff_pval=2e-3, t_order="random")),
    ("ttest p<1e-4 random", "ttest", dict(cutoff_pval=1e-4, t_order="random")),
    ("ttest p<2e-3 stratified 1-sided", "ttest", dict(cutoff_pval=2e-3, sides=1)),
    ("ttest p<2e-3 min 10", "ttest", dict(cutoff_pval=2e-3, min_scores=10)),
    ("halving 2 4 12 / 10 3 1", "halving", dict()),
    ("halving 2 4 12 / 10 3 1 band 0.0-1.0", "halving", dict(t_band=[0.0, 1.0])),
    ("halving 4 8 16 / 5 2 1", "halving", dict(rounds=[4, 8, 16], keep=[5, 2, 1])),
]
# 100 classes: every evaluation counts, so the list is shorter; Li et al.'s Food-101 schedule
# (about 100 classes) is the papers' reference point.
NUMBERS_CONFIGS = [
    ("exhaustive-5", "exhaustive", dict(n_grid=5)),
    ("exhaustive-10", "exhaustive", dict(n_grid=10)),
    ("exhaustive-20", "exhaustive", dict(n_grid=20)),
    ("exhaustive-50", "exhaustive", dict(n_grid=50)),
    (
        "adaptive 20 50 100 500 / 20 10 5 1 (Li, Food-101)",
        "adaptive",
        dict(n_samples=[20, 50, 100, 500], to_keep=[20, 10, 5, 1]),
    ),
    ("adaptive 10 50 / 10 1", "adaptive", dict(n_samples=[10, 50], to_keep=[10, 1])),
    ("adaptive 5 25 / 5 1", "adaptive", dict(n_samples=[5, 25], to_keep=[5, 1])),
    ("ttest p<1e-2 stratified", "ttest", dict(cutoff_pval=1e-2)),
    ("ttest p<2e-3 stratified", "ttest", dict(cutoff_pval=2e-3)),
    ("ttest p<1e-4 stratified", "ttest", dict(cutoff_pval=1e-4)),
    ("ttest p<2e-3 min 10", "ttest", dict(cutoff_pval=2e-3, min_scores=10)),
    *[
        (
            f"halving {' '.join(map(str, r))} / {' '.join(map(str, k))}"
            + ("" if b == [0.15, 0.6] else f" band {b[0]}-{b[1]}"),
            "halving",
            dict(rounds=r, keep=k, t_band=b),
        )
        for r, k, b in HALVING
    ],
]
# 1,000 classes (issue 29): every sample of every class costs 1,000 evaluations, so exhaustive stops at 10 grid
# points; Li et al.'s ImageNet schedule (124,500 evaluations an image) and the t-test (20,000 at least) run on
# a prefix (--limit); the goal is the best exhaustive accuracy within 0.5 point at <= 1,250 evaluations, which
# needs a first round of one sample per class.
NUMBERS3_CONFIGS = [
    ("exhaustive-2", "exhaustive", dict(n_grid=2)),
    ("exhaustive-5", "exhaustive", dict(n_grid=5)),
    ("exhaustive-10", "exhaustive", dict(n_grid=10)),
    (
        "adaptive 50 100 500 1000 / 500 50 10 1 (Li, ImageNet)",
        "adaptive",
        dict(n_samples=[50, 100, 500, 1000], to_keep=[500, 50, 10, 1]),
    ),
    ("ttest p<2e-3 stratified", "ttest", dict(cutoff_pval=2e-3)),
    ("halving 2 4 12 / 10 3 1", "halving", dict()),
    ("halving 1 3 11 / 25 5 1", "halving", dict(rounds=[1, 3, 11], keep=[25, 5, 1])),
    ("halving 1 2 4 12 / 50 10 3 1", "halving", dict(rounds=[1, 2, 4, 12], keep=[50, 10, 3, 1])),
    ("halving 1 3 11 / 25 5 1 band 0.0-1.0", "halving", dict(rounds=[1, 3, 11], keep=[25, 5, 1], t_band=[0.0, 1.0])),
    # more one-sample first rounds for the large-label choice (measured on the train split first: --split train)
    ("halving 1 3 11 / 50 5 1", "halving", dict(rounds=[1, 3, 11], keep=[50, 5, 1])),
    ("halving 1 2 4 12 / 100 20 5 1", "halving", dict(rounds=[1, 2, 4, 12], keep=[100, 20, 5, 1])),
    ("halving 1 4 12 / 50 5 1", "halving", dict(rounds=[1, 4, 12], keep=[50, 5, 1])),
    ("halving 1 3 11 / 25 5 1 band 0.1-0.5", "halving", dict(rounds=[1, 3, 11], keep=[25, 5, 1], t_band=[0.1, 0.5])),
]
# fashion has ten classes too: the digits list, so the two fronts compare row by row, plus Li et al.'s CIFAR-10
# schedule (ten classes: 50 samples each, the best 5 get 450 more; 2,750 evaluations an image), issue 26's reference
FASHION_CONFIGS = [
    *DIGITS_CONFIGS,
    ("adaptive 50 500 / 5 1 (Li, CIFAR-10)", "adaptive", dict(n_samples=[50, 500], to_keep=[5, 1])),
]
CONFIGS = {
    "digits": DIGITS_CONFIGS,
    "numbers": NUMBERS_CONFIGS,
    "fashion": FASHION_CONFIGS,
    "numbers3": NUMBERS3_CONFIGS,
}
QUICK = {
    "exhaustive-10",
    "exhaustive-50",
    "adaptive 10 50 / 3 1",
    "adaptive 10 50 / 10 1",
    "ttest p<2e-3 stratified",
    "ttest p<2e-3 random",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits", choices=sorted(CONFIGS), help="bundled model and its held-out split")
    ap.add_argument("--limit", type=int, default=None, help="the first N images (after --every)")
    ap.add_argument(
        "--split",
        default="heldout",
        choices=("heldout", "train"),
        help="heldout (the front) or train (choosing among rules: held-out images are for measuring only)",
    )
    ap.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help=(
            "every K-th image of the split: an even subset where a prefix is not (numbers3's splits are ordered by"
            " class, so its first 200 images have first digit 0 or 1)"
        ),
    )
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    ap.add_argument("--skip", nargs="*", default=[], help="configuration names to leave out")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--only", nargs="*", default=[], help="only configurations whose name contains one of these, run in this order"
    )
    ap.add_argument("--resume", action="store_true", help="keep the configurations already in the result file")
    ap.add_argument(
        "--tag", default=None, help="result file name after accuracy_vs_evals_ (default: <model>_<device>_<date>)"
    )
    ap.add_argument("--backend", default="torch", help="denoiser backend (torch, compile, aoti, ...); recorded per row")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--dtype", default="fp32", help="fp32 (default: the accuracies are comparable across devices), fp16 or bf16"
    )
    ap.add_argument(
        "--chunk",
        type=int,
        default=0,
        metavar="N",
        help=(
            "run each configuration N images at a time, saving its finished images after each part, so --resume"
            " continues a long configuration where a killed run stopped (picks do not depend on it)"
        ),
    )
    ap.add_argument(
        "--memo",
        action="store_true",
        help=(
            "answer queries a configuration of this run already asked from memory (bench/score_memo.py); rows record"
            " the queries really run"
        ),
    )
    ap.add_argument("--replot", default=None, metavar="JSON", help="only redraw the PNG of a result file, then exit")
    ap.add_argument(
        "--results-dir",
        default=str(RESULTS),
        help="where the JSON, PNG and per_image/ NPZ are read (--resume) and written (default: bench/results)",
    )
    a = ap.parse_args()
    if a.every < 1:
        ap.error(f"--every must be >= 1, got {a.every}")
    if a.chunk < 0:
        ap.error(f"--chunk must be >= 0 (0: a configuration in one part), got {a.chunk}")
    if a.replot:
        replot(a.replot)
        return
    results = Path(a.results_dir)
    if a.dtype == "fp32":
        import torch

        # fp32 means fp32 on CUDA too: cuDNN convolutions default to TF32 (a 10-bit mantissa), which
        # would make a GPU row of this table less precise than the CPU rows it is compared with.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    model = apply_backend(load_model(a.model, device=a.device, dtype=a.dtype), a.backend, batch_sizes=[a.batch_size])
    pil, y, class_names, _ = load_eval_split(a.model, a.split)
    pil, y = pil[:: a.every], y[:: a.every]
    if a.limit:
        pil, y = pil[: a.limit], y[: a.limit]
    check_subset_classes(y, len(class_names), a.every)
    env = environment(model.device)
    subset = ("" if a.split == "heldout" else f"_{a.split}") + ("" if a.every == 1 else f"_every{a.every}")
    tag = "accuracy_vs_evals_" + (a.tag or f"{a.model}{subset}_{device_tag(model.device)}_{env['date']}")
    per_image_path = results / "per_image" / (tag + ".npz")
    memo = ScoreMemo() if a.memo else None
    rows, per_image = ([], {})
    if a.resume:
        rows, per_image = _resume(results / (tag + ".json"), per_image_path, len(y), weights_of(model))
    for name, policy, opts in _ordered(CONFIGS[a.model], a.only):
        if (a.quick and name not in QUICK) or name in a.skip:
            continue
        if any(r["name"] == name for r in rows):
            print(f"{name:34s} (resumed)")
            continue
        if memo is None:
            clf = DiffusionClassifier(model, policy, batch_size=a.batch_size, use_cache=False, **opts)
        else:
            clf = MemoClassifier(model, policy, batch_size=a.batch_size, use_cache=False, memo=memo, **opts)
            misses0 = memo.misses
        part_path = _part_path(per_image_path, name)
        done = _load_part(part_path, name, len(y), env["device"], model.fingerprint) if a.resume else None
        if done is not None:
            print(f"{name:34s} resumed at image {len(done['label'])} of {len(y)}", flush=True)
        step = a.chunk or len(y)
        for lo in range(len(done["label"]) if done else 0, len(y), step):
            t0 = time.perf_counter()
            res = clf.classify(pil[lo : lo + step], class_names)
            wall = time.perf_counter() - t0
            st = clf.last_stats
            done = _extend(done, _per_image(res), wall, st.evaluations, st.padded_rows)
            if len(done["label"]) < len(y):
                # a run killed in the next part resumes here
                _save_part(part_path, name, done, env["device"], model.fingerprint)
                print(f"{name:34s} {len(done['label'])} of {len(y)} images, {float(done['seconds']):.0f} s", flush=True)
        wall = float(done["seconds"])
        acc = float(np.mean(done["label"] == np.asarray(y)))
        row = {
            "name": name,
            "policy": clf.policy_cfg.describe(),
            "accuracy": acc,
            "evals_per_image": float(np.mean(done["evals"])),
            "evals_spent_per_image": float(np.mean(done["spent"])),
            "seconds": round(wall, 2),
            "batch_fill": round(float(done["rows"]) / max(1.0, float(done["rows"] + done["padded"])), 4),
            "evals_per_second": round(float(done["rows"]) / wall if wall else 0.0, 1),
            "device": env["device"],
            "backend": model.backend,
            "dtype": str(model.dtype).removeprefix("torch."),
            "date": time.strftime("%Y-%m-%d"),
        }
        if a.chunk:
            row["parts_of"] = a.chunk
        if memo is not None:
            # the seconds are this run's: queries an earlier configuration asked cost no denoiser time here
            row["queries_run_per_image"] = (memo.misses - misses0) / len(y)
            row["memo"] = "queries asked earlier in the same run were answered from memory (bench/score_memo.py)"
        rows.append(row)
        per_image[name] = {k: done[k] for k in PER_IMAGE}
        print(
            f"{name:34s} acc {acc:.4f}  evals/img {row['evals_per_image']:8.1f}  ({row['evals_spent_per_image']:.1f}"
            f" spent)  {wall:6.1f}s  fill {row['batch_fill']:.3f}",
            flush=True,
        )
        # written after every configuration: a long run killed midway keeps what it measured (--resume)
        payload = {
            "benchmark": "accuracy_vs_evals",
            "model": a.model,
            "split": a.split,
            "every": a.every,
            "images": len(y),
            "weights": weights_of(model),
            **env,
            "labels": [int(t) for t in y],
            "results": rows,
        }
        results.mkdir(parents=True, exist_ok=True)
        (results / (tag + ".json")).write_text(json.dumps(payload, indent=2) + "\n")
        per_image_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            per_image_path,
            names=np.array(list(per_image)),
            **{f"c{i}_{k}": v for i, d in enumerate(per_image.values()) for k, v in d.items()},
        )
        part_path.unlink(missing_ok=True)
    print(f"wrote {results / (tag + '.json')} and {per_image_path}")
    if not a.no_plot:
        plot(rows, results / (tag + ".png"), env, len(y), a.model)


def check_subset_classes(y, n_classes: int, every: int) -> None:
    """Refuse a one-in-K subset that covers few classes: a split ordered round-robin over C classes gives only
    the classes of one residue when K shares a factor with C (fashion --every 10 is all t-shirts)."""
    covered, want = len(set(np.asarray(y).tolist())), min(n_classes, len(y))
    if every > 1 and covered < want / 2:
        coprime = [k for k in (7, 11, 13, 17, 19, 23, 29) if math.gcd(k, n_classes) == 1][:2]
        raise SystemExit(
            f"--every {every} takes {len(y)} images of only {covered} of {n_classes} classes (the split is ordered"
            f" round-robin over its classes): choose a K that shares no factor with {n_classes}, e.g."
            f" {' or '.join(map(str, coprime))}"
        )


def replot(json_path: str | Path) -> Path:
    """The PNG of a result file (a run stopped between configurations writes no plot itself)."""
    p = Path(json_path)
    d = json.loads(p.read_text())
    out = p.with_suffix(".png")
    plot(d["results"], out, d, d["images"], d["model"])
    return out


def _ordered(configs: list, only: list[str]) -> list:
    """``configs`` filtered to those whose name contains one of ``only``, in the order of ``only``
    (the first entry a name matches); all of them, in their own order, when ``only`` is empty."""
    if not only:
        return list(configs)
    names = {c[0] for c in configs}
    # an entry that is a configuration's full name picks that one only ("exhaustive-5", not also "exhaustive-50")
    first = {
        c[0]: min((k for k, o in enumerate(only) if (o == c[0] if o in names else o in c[0])), default=None)
        for c in configs
    }
    return sorted((c for c in configs if first[c[0]] is not None), key=lambda c: first[c[0]])


PER_IMAGE = ("label", "evals", "mean_errors", "n_scores")  # what the per_image NPZ keeps of each configuration


def _per_image(res) -> dict[str, np.ndarray]:
    """What calibration and paired comparisons need, per image: label, evaluations, and the posterior's inputs."""
    return {
        "label": np.array([r.label for r in res], np.int64),
        "evals": np.array([r.evaluations for r in res], np.int64),
        "spent": np.array([r.evaluations_spent for r in res], np.int64),
        "mean_errors": np.stack([r.mean_errors for r in res]).astype(np.float32),
        "n_scores": np.stack([r.n_scores for r in res]).astype(np.int32),
    }


def _extend(done: dict | None, new: dict, seconds: float, rows: int, padded: int) -> dict:
    """The images of a configuration run so far, with the next part's appended (and its wall time and batch rows)."""
    if done is None:
        return {**new, "seconds": np.float64(seconds), "rows": np.int64(rows), "padded": np.int64(padded)}
    out = {k: np.concatenate([done[k], v]) for k, v in new.items()}
    return {**out, "seconds": done["seconds"] + seconds, "rows": done["rows"] + rows, "padded": done["padded"] + padded}


def _part_path(per_image_path: Path, name: str) -> Path:
    """Where the finished images of an unfinished configuration wait (next to the per_image NPZ)."""
    return per_image_path.with_name(
        f"{per_image_path.stem}.partial-{hashlib.sha256(name.encode()).hexdigest()[:10]}.npz"
    )


def _save_part(path: Path, name: str, done: dict, device: str, fingerprint: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, name=np.array(name), device=np.array(device), weights=np.array(fingerprint), **done)
    tmp.replace(path)  # a kill while writing leaves the previous part intact


def _load_part(path: Path, name: str, n: int, device: str, fingerprint: str = "") -> dict | None:
    """The finished first images of configuration ``name`` (an earlier run stopped between parts), or None.

    Only parts run on this device, of these weights, are continued: a row records one device, and its seconds
    would mean nothing summed over two."""
    if not path.is_file():
        return None
    z = np.load(path)
    done = {k: z[k] for k in z.files if k not in ("name", "device", "weights")}
    if str(z["name"]) != name or len(done["label"]) > n:
        return None
    if "weights" in z.files and str(z["weights"]) not in ("", fingerprint):
        print(f"{name:34s} starts again: its saved part measured other weights ({z['weights']})", flush=True)
        return None
    if str(z["device"]) != device:
        print(f"{name:34s} starts again: its saved part ran on {z['device']}, this is {device}", flush=True)
        return None
    return done


def _resume(json_path: Path, npz_path: Path, n: int, weights: dict) -> tuple[list[dict], dict]:
    """The rows (and per-image arrays) of ``json_path`` measured on all ``n`` images; a front of weights other
    than ``weights`` (:func:`bench.common.weights_of`) is refused: its rows would be relabelled as these."""
    if not (json_path.is_file() and npz_path.is_file()):
        return [], {}
    payload = json.loads(json_path.read_text())
    why = other_weights(payload.get("weights"), weights)
    if why:  # a front mixing two checkpoints would compare nothing
        raise SystemExit(f"{json_path.name} measured other weights ({why}): measure these under a new --tag")
    rows = payload["results"]
    z = np.load(npz_path)
    names = list(z["names"])
    per_image = {nm: {k: z[f"c{i}_{k}"] for k in PER_IMAGE} for i, nm in enumerate(names)}
    rows = [r for r in rows if r["name"] in per_image and len(per_image[r["name"]]["label"]) == n]
    return rows, {r["name"]: per_image[r["name"]] for r in rows}


def plot(rows: list[dict], path: Path, env: dict, n: int, model: str = "digits") -> None:
    """Accuracy vs evaluations per image (log x). The exhaustive grid is a line; every other
    configuration is its own marker named in the legend beside the axes, so no label can overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    ex = sorted((r["evals_per_image"], r["accuracy"], r["name"]) for r in rows if r["name"].startswith("exhaustive"))
    if ex:
        xs, ys, names = zip(*ex)
        ax.plot(
            xs,
            ys,
            "o-",
            color="tab:gray",
            label="exhaustive (n_grid " + ", ".join(nm.split("-")[1] for nm in names) + ")",
        )
    families = {"adaptive": ("s", plt.cm.Blues), "ttest": ("^", plt.cm.Reds), "halving": ("D", plt.cm.Greens)}
    for fam, (marker, cmap) in families.items():
        pts = [r for r in rows if r["name"].startswith(fam)]
        for k, r in enumerate(pts):
            color = cmap(0.45 + 0.5 * k / max(1, len(pts) - 1))
            label = f"{r['name']}  ({r['evals_per_image']:.0f} evals, {r['accuracy']:.3f})"
            ax.plot(
                r["evals_per_image"],
                r["accuracy"],
                marker,
                color=color,
                markersize=8,
                markeredgecolor="black",
                markeredgewidth=0.5,
                label=label,
            )
    ax.set_xscale("log")
    # plain numbers at 1-2-5 steps: matplotlib's minor labels (3x10^2, 4x10^2, ...) collide on a short axis
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    xs_all = [r["evals_per_image"] for r in rows] or [1.0]
    ticks = [m * 10**e for e in range(0, 7) for m in (1, 2, 5) if min(xs_all) / 1.5 <= m * 10**e <= max(xs_all) * 1.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("denoiser evaluations per image (log scale)")
    ax.set_ylabel("held-out accuracy")
    where = sorted({f"{r['device']} ({r['backend']}, {r['dtype']})" for r in rows if "backend" in r}) or [env["device"]]
    dates = sorted({r.get("date", env["date"]) for r in rows})
    ax.set_title(f"{model}, {n} held-out images — {'; '.join(where)}, {', '.join(dates)}", fontsize=9, loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    # "tight" grows the canvas to the legend beside the axes and to a long title, which would be cut off
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
