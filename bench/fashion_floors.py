"""The ``fashion`` model's floor: an RBF SVC on the same training images, scored on the same held-out images.

    python -m bench.fashion_floors                         # SVC on all 60,000 training images (needs the dataset)
    python -m bench.fashion_floors --train-limit 10000     # a quicker, weaker floor (first N of a seeded shuffle)
    python -m bench.fashion_floors --front bench/results/accuracy_vs_evals_fashion_cpu_2026-12-06.json
        # also list the diffusion classifier's rows of an accuracy_vs_evals run on the same held-out prefix

The SVC is scikit-learn's ``SVC()`` with its defaults (RBF kernel, C = 1, gamma = "scale"), on the raw
28x28 pixels scaled to [0, 1]: the floor a generative classifier of these images should clear. It is
fitted on the Fashion-MNIST training set (Debian's dataset-fashion-mnist), which is also all the
diffusion model was trained on, and scored on the shipped held-out subset (2,000 test images) and on
each prefix a front was measured on.

Writes bench/results/fashion_floors_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import environment, write_json
from diffcls_fast.data import fashion


def fit_svc(train_limit: int | None, seed: int = 0):
    from sklearn.svm import SVC

    images, labels = fashion.load_full("train")
    order = np.random.default_rng(seed).permutation(len(labels))[:train_limit]
    x = images[order].reshape(len(order), -1).astype(np.float32) / 255.0
    return SVC(kernel="rbf").fit(x, labels[order]), len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-limit", type=int, default=None, help="fit on N training images (default: all 60,000)")
    ap.add_argument("--front", nargs="*", default=[], help="accuracy_vs_evals result files to list beside the floor")
    a = ap.parse_args()

    t0 = time.perf_counter()
    svc, n_train = fit_svc(a.train_limit)
    fit_s = time.perf_counter() - t0
    images, labels, _ = fashion.split_arrays("heldout")
    pred = svc.predict(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    hits = pred == labels
    prefixes = sorted({len(hits), 200, 500, 1000} & set(range(1, len(hits) + 1)))
    floor = {
        "classifier": "sklearn SVC() (RBF, C=1, gamma='scale') on pixels / 255",
        "train_images": n_train,
        "fit_seconds": round(fit_s, 1),
        "accuracy": float(hits.mean()),
        "accuracy_of_first": {str(k): float(hits[:k].mean()) for k in prefixes},
        "predictions": pred.tolist(),
    }
    diffusion = []
    for f in a.front:
        payload = json.loads(Path(f).read_text())
        n = payload["images"]
        for r in payload["results"]:
            diffusion.append(
                {
                    "file": Path(f).name,
                    "images": n,
                    "name": r["name"],
                    "accuracy": r["accuracy"],
                    "evals_per_image": r["evals_per_image"],
                    "svc_same_images": float(hits[:n].mean()),
                }
            )
    payload = {"benchmark": "fashion_floors", **environment("cpu"), "svc": floor, "diffusion": diffusion}
    path = write_json(f"fashion_floors_cpu_{payload['date']}.json", payload)
    print(f"RBF SVC on {n_train} training images: held-out accuracy {floor['accuracy']:.4f} ({len(hits)} images)")
    for k, v in floor["accuracy_of_first"].items():
        print(f"  first {k}: {v:.4f}")
    for d in diffusion:
        print(f"  diffusion {d['name']}: {d['accuracy']:.4f} on {d['images']} (SVC {d['svc_same_images']:.4f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
