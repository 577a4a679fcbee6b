"""The ``fashion`` model's floors: RBF SVC, logistic regression and k-NN on the same training images' pixels,
scored on the same held-out images.

    python -m bench.fashion_floors                         # SVC on all 60,000 training images (needs the dataset)
    python -m bench.fashion_floors --train-limit 10000     # a quicker, weaker floor (first N of a seeded shuffle)
    python -m bench.fashion_floors --classifiers logreg knn  # only these; the day's file keeps the others' rows
    python -m bench.fashion_floors --front bench/results/accuracy_vs_evals_fashion_cpu_2026-12-06.json
        # also list the diffusion classifier's rows of an accuracy_vs_evals run on the same held-out prefix

The SVC is scikit-learn's ``SVC()`` with its defaults (RBF kernel, C = 1, gamma = "scale"), logistic
regression and 5-nearest-neighbours likewise, on the raw 28x28 pixels scaled to [0, 1]: the floors a
generative classifier of these images should clear. Each is fitted on the Fashion-MNIST training set
(Debian's dataset-fashion-mnist), which is also all the diffusion model was trained on, and scored on the
shipped held-out subset (2,000 test images) and on each prefix a front was measured on.

Writes bench/results/fashion_floors_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, environment, write_json
from diffcls_fast.data import fashion

CLASSIFIERS = {
    "svc": "sklearn SVC() (RBF, C=1, gamma='scale') on pixels / 255",
    "logreg": "sklearn LogisticRegression(max_iter=1000) (L2, C=1, lbfgs) on pixels / 255",
    "knn": "sklearn KNeighborsClassifier(n_neighbors=5) (Euclidean) on pixels / 255",
}


def _model(kind: str):
    if kind == "svc":
        from sklearn.svm import SVC

        return SVC(kernel="rbf")
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=1000)
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5)


def fit_floor(kind: str, train_limit: int | None, seed: int = 0):
    images, labels = fashion.load_full("train")
    order = np.random.default_rng(seed).permutation(len(labels))[:train_limit]
    x = images[order].reshape(len(order), -1).astype(np.float32) / 255.0
    return _model(kind).fit(x, labels[order]), len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-limit", type=int, default=None, help="fit on N training images (default: all 60,000)")
    ap.add_argument("--classifiers", nargs="+", default=list(CLASSIFIERS), choices=list(CLASSIFIERS))
    ap.add_argument("--front", nargs="*", default=[], help="accuracy_vs_evals result files to list beside the floor")
    a = ap.parse_args()

    env = environment("cpu")
    name = f"fashion_floors_cpu_{env['date']}.json"
    old = RESULTS / name
    payload = json.loads(old.read_text()) if old.is_file() else {"benchmark": "fashion_floors", "diffusion": []}
    payload.update(env)
    images, labels, _ = fashion.split_arrays("heldout")
    x_held = images.reshape(len(images), -1).astype(np.float32) / 255.0
    prefixes = sorted({len(labels), 200, 500, 1000} & set(range(1, len(labels) + 1)))
    for kind in a.classifiers:
        t0 = time.perf_counter()
        clf, n_train = fit_floor(kind, a.train_limit)
        fit_s = time.perf_counter() - t0
        pred = clf.predict(x_held)
        hits = pred == labels
        payload[kind] = {
            "classifier": CLASSIFIERS[kind],
            "train_images": n_train,
            "fit_seconds": round(fit_s, 1),
            "accuracy": float(hits.mean()),
            "accuracy_of_first": {str(k): float(hits[:k].mean()) for k in prefixes},
            "predictions": pred.tolist(),
            "date": env["date"],
            "device": env["device"],
        }
        print(f"{kind} on {n_train} training images: held-out accuracy {hits.mean():.4f} ({len(hits)} images)")
    svc_hits = np.array(payload["svc"]["predictions"]) == labels if "svc" in payload else None
    if a.front:
        payload["diffusion"] = []
    for f in a.front:
        front = json.loads(Path(f).read_text())
        n = front["images"]
        for r in front["results"]:
            payload["diffusion"].append(
                {
                    "file": Path(f).name,
                    "images": n,
                    "name": r["name"],
                    "accuracy": r["accuracy"],
                    "evals_per_image": r["evals_per_image"],
                    "svc_same_images": None if svc_hits is None else float(svc_hits[:n].mean()),
                }
            )
    print(f"wrote {write_json(name, payload)}")


if __name__ == "__main__":
    main()
