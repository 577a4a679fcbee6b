"""Floors of the ``numbers`` benchmark: the diffusion classifier against a discriminative baseline.

    python -m bench.numbers_floors                          # exhaustive-50 on all 1,000 held-out pairs
    python -m bench.numbers_floors --limit 200 --n-grid 50  # 2 pairs per class (the held-out order is round-robin)
    python -m bench.numbers_floors --model PATH --limit 100 --n-grid 10 --tag step6000   # a training snapshot
    python -m bench.numbers_floors --from-front bench/results/accuracy_vs_evals_numbers_heldout1000.json
        # the exhaustive-50 labels of an accuracy_vs_evals run (same policy, seed and pairs: no new evaluations)

Reports pair accuracy (both digits right) and per-position accuracy (first digit,
second digit) of

* the diffusion classifier, exhaustive over the 100 classes on an ``--n-grid`` point
  timestep grid (``n_grid x 100`` evaluations per image), and
* an RBF SVC trained on the 1,400 single training digits, applied to each half
  (a pair is right when both halves are), on the same pairs and on all 1,000.

Writes bench/results/numbers_floors_<device>_<date>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import device_tag, environment, write_json
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data import digits, numbers


def position_accuracy(pred: np.ndarray, true: np.ndarray) -> dict:
    """Pair, first-digit and second-digit accuracy of class indices 10a+b."""
    pred, true = np.asarray(pred), np.asarray(true)
    return {
        "pair": float(np.mean(pred == true)),
        "first": float(np.mean(pred // 10 == true // 10)),
        "second": float(np.mean(pred % 10 == true % 10)),
        "images": int(len(true)),
    }


def svc_baseline(pairs: list[list[int]]) -> np.ndarray:
    """Predicted classes of an RBF SVC (scikit-learn defaults) fitted on single training digits and applied to
    each digit of every index tuple into ``load_digits``: 10a+b for pairs (100a+10b+c for numbers3's triples)."""
    from sklearn.svm import SVC

    images, labels = digits._load()
    train = digits.split_indices("train")
    svc = SVC(kernel="rbf").fit(images[train].reshape(len(train), -1) / 16.0, labels[train])
    flat = np.array(pairs).reshape(-1)
    n = len(pairs[0])
    pred = svc.predict(images[flat].reshape(len(flat), -1) / 16.0).reshape(-1, n)
    return pred @ 10 ** np.arange(n - 1, -1, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="numbers", help="the bundled numbers model or a snapshot folder")
    ap.add_argument("--limit", type=int, default=1000, help="first N held-out pairs (N/100 per class)")
    ap.add_argument(
        "--n-grid",
        type=int,
        default=50,
        help="timestep grid of the exhaustive policy (default 50: 5,000 evaluations per image)",
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument(
        "--from-front",
        default=None,
        metavar="JSON",
        help=(
            "reuse the exhaustive-<n-grid> labels of a bench.accuracy_vs_evals result (and its per_image NPZ) instead"
            " of classifying again"
        ),
    )
    a = ap.parse_args()

    pairs = numbers.split_pairs("heldout")
    pil, y, _ = numbers.load_split("heldout")
    pil, y = pil[: a.limit], y[: a.limit]

    svc_all = svc_baseline(pairs)
    baseline = {
        "all_1000": position_accuracy(svc_all, numbers.load_split("heldout")[1]),
        "same_pairs": position_accuracy(svc_all[: a.limit], y),
    }

    if a.from_front:
        pred, diffusion, env = _from_front(a.from_front, a.n_grid, len(y))
        diffusion = {**position_accuracy(pred, y), **diffusion}
        wall = diffusion["seconds"]
    else:
        model = load_model(a.model, device=a.device)
        clf = DiffusionClassifier(model, "exhaustive", n_grid=a.n_grid, batch_size=a.batch_size, use_cache=False)
        t0 = time.perf_counter()
        results = clf.classify(pil, numbers.CLASS_NAMES, progress=_progress(len(pil)))
        wall = time.perf_counter() - t0
        pred = np.array([r.label for r in results])
        diffusion = position_accuracy(pred, y)
        diffusion.update(
            policy=clf.policy_cfg.describe(),
            evals_per_image=float(np.mean([r.evaluations for r in results])),
            seconds=round(wall, 1),
            run=clf.last_stats.to_dict(),
        )
        env = environment(a.device)
    diffusion["predictions"] = pred.tolist()

    training = "" if a.from_front else getattr(model, "path", "")
    payload = {
        "benchmark": "numbers_floors",
        "model": a.model,
        "training": training,
        **env,
        "diffusion": diffusion,
        "svc_baseline": baseline,
    }
    name = f"numbers_floors_{device_tag(a.device)}_{env['date']}" + (f"_{a.tag}" if a.tag else "")
    path = write_json(name + ".json", payload)
    d = diffusion
    print(
        f"diffusion {d['policy']}: pair {d['pair']:.4f}  first {d['first']:.4f}  second {d['second']:.4f}  ({len(y)}"
        f" pairs, {d['evals_per_image']:.0f} evals/image, {wall:.0f} s)"
    )
    s = baseline["same_pairs"]
    print(
        f"RBF SVC per half (same pairs): pair {s['pair']:.4f}  first {s['first']:.4f}  second {s['second']:.4f}; all"
        f" 1,000 pairs: {baseline['all_1000']['pair']:.4f}"
    )
    print(f"wrote {path}")


def _from_front(path: str, n_grid: int, n: int) -> tuple[np.ndarray, dict, dict]:
    """(labels, diffusion fields, environment) of the exhaustive-<n_grid> row of an accuracy_vs_evals
    result: the same policy, seed and held-out pairs as a run of this script, so the same labels."""
    import json
    from pathlib import Path

    p = Path(path)
    payload = json.loads(p.read_text())
    if payload.get("benchmark") != "accuracy_vs_evals" or payload.get("model") != "numbers":
        raise SystemExit(f"{p}: not a bench.accuracy_vs_evals result on numbers")
    name = f"exhaustive-{n_grid}"
    row = next((r for r in payload["results"] if r["name"] == name), None)
    if row is None:
        raise SystemExit(
            f"{p}: has no {name} row (run: python -m bench.accuracy_vs_evals --model numbers --only {name} ...)"
        )
    if payload["images"] < n:
        raise SystemExit(f"{p}: covers {payload['images']} pairs, fewer than --limit {n}")
    z = np.load(p.parent / "per_image" / (p.stem + ".npz"))
    k = list(z["names"]).index(name)
    labels = z[f"c{k}_label"][:n]
    env = environment() | {
        "device": row.get("device", payload.get("device")),
        "date": row.get("date", payload.get("date")),
    }  # where the labels were computed
    fields = {
        "policy": row["policy"],
        "evals_per_image": row["evals_per_image"],
        "seconds": row["seconds"],
        "from": p.name,
        "backend": row.get("backend"),
    }
    return labels, fields, env


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="numbers", unit="img", mininterval=5)


if __name__ == "__main__":
    main()
