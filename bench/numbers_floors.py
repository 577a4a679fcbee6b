"""Floors of the ``numbers`` benchmark: the diffusion classifier against a discriminative baseline.

    python -m bench.numbers_floors                          # exhaustive-50 on all 1,000 held-out pairs
    python -m bench.numbers_floors --limit 200 --n-grid 50  # 2 pairs per class (the held-out order is round-robin)
    python -m bench.numbers_floors --model PATH --limit 100 --n-grid 10 --tag step6000   # a training snapshot

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
    """Predicted classes 10a+b of an RBF SVC (scikit-learn defaults) fitted on single training digits."""
    from sklearn.svm import SVC

    images, labels = digits._load()
    train = digits.split_indices("train")
    svc = SVC(kernel="rbf").fit(images[train].reshape(len(train), -1) / 16.0, labels[train])
    flat = np.array(pairs).reshape(-1)
    pred = svc.predict(images[flat].reshape(len(flat), -1) / 16.0).reshape(-1, 2)
    return 10 * pred[:, 0] + pred[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="numbers", help="the bundled numbers model or a snapshot folder")
    ap.add_argument("--limit", type=int, default=1000, help="first N held-out pairs (N/100 per class)")
    ap.add_argument("--n-grid", type=int, default=50, help="timestep grid of the exhaustive policy (default 50: 5,000 evaluations per image)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    a = ap.parse_args()

    pairs = numbers.split_pairs("heldout")
    pil, y, _ = numbers.load_split("heldout")
    pil, y = pil[: a.limit], y[: a.limit]

    svc_all = svc_baseline(pairs)
    baseline = {"all_1000": position_accuracy(svc_all, numbers.load_split("heldout")[1]), "same_pairs": position_accuracy(svc_all[: a.limit], y)}

    model = load_model(a.model, device=a.device)
    clf = DiffusionClassifier(model, "exhaustive", n_grid=a.n_grid, batch_size=a.batch_size, use_cache=False)
    t0 = time.perf_counter()
    results = clf.classify(pil, numbers.CLASS_NAMES, progress=_progress(len(pil)))
    wall = time.perf_counter() - t0
    pred = np.array([r.label for r in results])
    diffusion = position_accuracy(pred, y)
    diffusion.update(policy=clf.policy_cfg.describe(), evals_per_image=float(np.mean([r.evaluations for r in results])), seconds=round(wall, 1), run=clf.last_stats.to_dict())
    diffusion["predictions"] = pred.tolist()

    env = environment(a.device)
    payload = {"benchmark": "numbers_floors", "model": a.model, "training": getattr(model, "path", ""), **env, "diffusion": diffusion, "svc_baseline": baseline}
    name = f"numbers_floors_{device_tag(a.device)}_{env['date']}" + (f"_{a.tag}" if a.tag else "")
    path = write_json(name + ".json", payload)
    d = diffusion
    print(f"diffusion {d['policy']}: pair {d['pair']:.4f}  first {d['first']:.4f}  second {d['second']:.4f}  ({len(y)} pairs, {d['evals_per_image']:.0f} evals/image, {wall:.0f} s)")
    s = baseline["same_pairs"]
    print(f"RBF SVC per half (same pairs): pair {s['pair']:.4f}  first {s['first']:.4f}  second {s['second']:.4f}; all 1,000 pairs: {baseline['all_1000']['pair']:.4f}")
    print(f"wrote {path}")


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="numbers", unit="img", mininterval=5)


if __name__ == "__main__":
    main()
