"""Fit a bundled model's out-of-distribution rule on its train split; measure it on held-out and junk images.

    python scripts/fit_ood.py --model digits --policies halving ttest exhaustive --train 300 --heldout 397
    python scripts/fit_ood.py --model numbers --policies halving ttest exhaustive --train 300 --heldout 400
    python scripts/fit_ood.py --model fashion --policies halving exhaustive --fit-split tune --train 300 --heldout 200

For each policy (default options; exhaustive on ``--exhaustive-grid`` points, as
scripts/fit_calibration.py, whose cached runs it shares), the policy runs on the
first ``--train`` images of the train split (``--fit-split tune``: fashion's unseen tuning images). The
rule's threshold is ``--margin`` times the 99th percentile of the winner's mean error there (see
diffcls_fast/engine/ood.py for why a margin: train images were seen in training; fitted on unseen images the
margin is 1). On fashion the train recipe flags no junk at all: its latent model scores its own training
images almost as badly as new ones (99th percentiles 0.206 and 0.211), so twice that lets every junk image pass.
It is written into the policy's calibration entry in the model folder's
``diffcls.json``. Then it is measured, never fitted, on:

* the first ``--heldout`` held-out images: the false-positive rate (in-distribution images flagged);
* junk: blank images (black, white, grey), a 1x1 and a 2x2 image, a fully transparent image, uniform pixel
  noise, and another dataset's images (the other bundled model's held-out images, resized by the usual
  preprocessing; Fashion-MNIST test images when Debian's dataset-fashion-mnist is installed): the detection rate.

Writes bench/results/ood_<model>_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_calibration import MODELS, run  # noqa: E402

from bench.common import RESULTS, device_tag, environment, write_json  # noqa: E402
from diffcls_fast import DiffusionClassifier, load_model  # noqa: E402
from diffcls_fast.evaluate import load_eval_split  # noqa: E402

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
QUANTILE = 0.99


def winner_errors(results: list) -> np.ndarray:
    """The label's mean error of each answered image (the quantity the rule thresholds)."""
    return np.array([r.mean_errors[r.label] for r in results if r.ok])


def fashion_images(n: int) -> list[Image.Image]:
    """The first ``n`` Fashion-MNIST test images (28x28, white garment on black), from the Debian package."""
    with gzip.open(FASHION_TEST, "rb") as f:
        data = f.read()
    count, rows, cols = (int.from_bytes(data[4 * k : 4 * k + 4], "big") for k in (1, 2, 3))
    pixels = np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    return [Image.fromarray(p) for p in pixels[:n]]


def junk_sets(model_name: str, n_other: int, seed: int = 0) -> dict[str, list]:
    """Images no bundled model was trained on, by kind."""
    rng = np.random.default_rng(seed)
    sets = {
        "blank": [Image.new("L", (8, 8), v) for v in (0, 255, 128)],
        "tiny": [Image.new("L", (1, 1), 200), Image.fromarray(rng.integers(0, 256, (2, 2), dtype=np.uint8))],
        "transparent": [Image.new("RGBA", (8, 8), (0, 0, 0, 0))],
        "pixel_noise": [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(20)],
    }
    for other in ("digits", "numbers"):  # the other bundled models' held-out images
        if other != model_name:
            sets[f"{other}_heldout"] = load_eval_split(other, "heldout")[0][:n_other]
    if model_name != "fashion" and FASHION_TEST.is_file():
        sets["fashion_mnist"] = fashion_images(n_other)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=["digits", "numbers", "fashion"])
    ap.add_argument("--policies", nargs="+", default=["halving", "ttest", "exhaustive"])
    ap.add_argument("--train", type=int, default=300, help="images of --fit-split the fit uses")
    ap.add_argument("--heldout", type=int, default=400, help="held-out images the false-positive rate uses")
    ap.add_argument("--other", type=int, default=50, help="images of each other dataset in the junk set")
    ap.add_argument("--exhaustive-grid", type=int, default=10)
    ap.add_argument(
        "--fit-split",
        default="train",
        choices=["train", "tune"],
        help="images the threshold is fitted on: train (seen in training), or tune (fashion: unseen, not held out)",
    )
    ap.add_argument(
        "--margin",
        type=float,
        default=None,
        help="threshold = margin x the fit images' 99th percentile (default: 2 on train, whose images were seen in"
        " training and score low; 1 on tune, which are as new as held-out ones)",
    )
    ap.add_argument("--no-write", action="store_true", help="report only; leave diffcls.json as it is")
    a = ap.parse_args()
    if a.fit_split == "tune" and a.model != "fashion":
        ap.error(f"--fit-split tune: only fashion ships a tune split; {a.model} fits on train")
    if a.margin is None:
        a.margin = 2.0 if a.fit_split == "train" else 1.0

    model = load_model(a.model)
    meta_path = MODELS / a.model / "diffcls.json"
    meta = json.loads(meta_path.read_text())
    junk = junk_sets(a.model, a.other)
    report = []
    for policy in a.policies:
        if policy not in meta.get("calibration", {}):
            sys.exit(f"fit_ood: {a.model} has no calibration for {policy}; run scripts/fit_calibration.py first")
        opts = {"n_grid": a.exhaustive_grid} if policy == "exhaustive" else {}
        tr, _, tr_info = run(model, policy, a.fit_split, a.train, opts)
        train_err = winner_errors(tr)
        threshold = float(a.margin * np.quantile(train_err, QUANTILE))
        ho, _, ho_info = run(model, policy, "heldout", a.heldout, opts)
        held = winner_errors(ho)
        clf = DiffusionClassifier(model, policy, use_cache=False, **opts)
        rule = {
            "threshold": threshold,
            "policy": clf.policy_cfg.to_dict(),
            "quantile": QUANTILE,
            "margin": a.margin,
            "fitted_on": f"{a.model} {a.fit_split} split, first {len(tr)} images",
            "command": "python " + " ".join(sys.argv),
        }
        detected = {}
        for kind, images in junk.items():
            errs = winner_errors(clf.classify(images))
            detected[kind] = {
                "images": len(images),
                "detected": int((errs > threshold).sum()),
                "rate": round(float((errs > threshold).mean()), 4),
                "min_score": round(float(errs.min() / threshold), 3),
            }
        all_junk = sum(d["detected"] for d in detected.values()), sum(d["images"] for d in detected.values())
        row = {
            "policy": policy,
            "margin": a.margin,
            "fit_split": a.fit_split,
            "fitted_with": tr_info["policy"],
            "threshold": threshold,
            "train_quantiles": {q: round(float(np.quantile(train_err, float(q))), 5) for q in ("0.5", "0.9", "0.99")},
            "heldout_quantiles": {q: round(float(np.quantile(held, float(q))), 5) for q in ("0.5", "0.9", "0.99")},
            "heldout_images": len(held),
            "false_positive_rate": round(float((held > threshold).mean()), 4),
            "heldout_max_score": round(float(held.max() / threshold), 3),
            "junk": detected,
            "junk_detection_rate": round(all_junk[0] / all_junk[1], 4),
        }
        report.append(row)
        meta["calibration"][policy]["out_of_distribution"] = rule
        kinds = ", ".join(f"{k} {d['detected']}/{d['images']}" for k, d in detected.items())
        print(
            f"{policy:10s} threshold {threshold:.4g}: held-out false positives {row['false_positive_rate']:.2%}"
            f" ({len(held)} images); junk detected {all_junk[0]}/{all_junk[1]} ({kinds})",
            flush=True,
        )
    if not a.no_write:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {meta_path}")
    env = environment()
    name = f"ood_{a.model}_{device_tag()}_{env['date']}.json"
    old = RESULTS / name
    if old.is_file():  # a later run for other policies adds to today's report
        done = {r["policy"] for r in report}
        report = [r for r in json.loads(old.read_text())["results"] if r["policy"] not in done] + report
    p = write_json(name, {"benchmark": "out_of_distribution", "model": a.model, **env, "results": report})
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
