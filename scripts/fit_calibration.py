"""Fit a bundled model's posterior calibration on its train split; report ECE and NLL on held-out.

    python scripts/fit_calibration.py --model numbers --policies halving ttest exhaustive --train 300 --heldout 1000
    python scripts/fit_calibration.py --model digits --policies halving ttest exhaustive --train 300 --heldout 400
    python scripts/fit_calibration.py --model numbers --policies adaptive --train 100 --heldout 200 --backend aoti
    # held-out metrics from a front's saved errors (all its images), no held-out run
    python scripts/fit_calibration.py --model fashion --policies halving exhaustive --train 400 \
        --heldout-front bench/results/accuracy_vs_evals_fashion_heldout2000.json

For each policy (with its default options; exhaustive on ``--exhaustive-grid``
points, since the posterior's scale is a mean error, not a count), the policy
runs on the first ``--train`` images of the model's ``train`` split (numbers:
training digits only; digits: the training digits), and the temperature T and
floor alpha of :mod:`diffcls_fast.engine.calibration` that minimise the NLL of
the true class are written to the model folder's ``diffcls.json`` under
``"calibration"``. Then the same policy runs on the first ``--heldout`` held-out
images (with ``--heldout-front``: its row of that front is read instead, every image
of the front, or its first ``--heldout``), and the expected calibration error (15 bins) and NLL are reported with
the uncalibrated default (T = 1e-2, no floor) and with the fitted values.
Held-out images never enter the fit.

Writes bench/results/calibration_<model>_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, device_tag, environment, other_weights, weights_of, write_json  # noqa: E402
from diffcls_fast import DiffusionClassifier, load_model  # noqa: E402
from diffcls_fast.engine.calibration import ece, fit_calibration, nll  # noqa: E402
from diffcls_fast.engine.options import DEFAULT_TEMPERATURE  # noqa: E402
from diffcls_fast.engine.results import finalists, posterior  # noqa: E402
from diffcls_fast.evaluate import load_eval_split  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "diffcls_fast" / "models"


CACHE = Path(__file__).resolve().parents[1] / "bench" / "cache"


def run(model, policy: str, split: str, limit: int, opts: dict, every: int = 1) -> tuple[list, np.ndarray, dict]:
    """The policy's results on the first ``limit`` of every ``every``-th image of ``split`` (cached under
    bench/cache: refits are free)."""
    images, labels, class_names, _ = load_eval_split(model.name, split)
    images, labels = images[::every][:limit], np.asarray(labels[::every][:limit])
    clf = DiffusionClassifier(model, policy, use_cache=False, **opts)
    subset = f"|every{every}" if every > 1 else ""  # every 1: the key (so the cache) of the runs before --every
    key = hashlib.sha256(
        f"{model.fingerprint}|{clf.policy_cfg.describe()}|{split}|{limit}|{clf.seed}{subset}".encode()
    ).hexdigest()[:12]
    cached = CACHE / f"calibration_{model.name}_{policy}_{split}_{limit}_{key}.pkl"
    t0 = time.perf_counter()
    if cached.is_file():
        res = pickle.loads(cached.read_bytes())
    else:
        res = clf.classify(images, class_names)
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(pickle.dumps(res))
    info = {
        "policy": clf.policy_cfg.describe(),
        "images": len(res),
        "seconds": round(time.perf_counter() - t0, 1),
        "accuracy": float(np.mean([r.label == y for r, y in zip(res, labels)])),
    }
    info["evals_per_image"] = float(np.mean([r.evaluations for r in res]))
    hits = np.array([r.label == y for r, y in zip(res, labels)])
    info["accuracy_of_first"] = {
        str(k): float(hits[:k].mean()) for k in (100, 200) if k < len(hits)
    }  # beside runs on fewer images
    return res, labels, info


def from_front(
    json_path: Path, policy: str, limit: int | None = None, model: str | None = None, weights: dict | None = None
) -> tuple[list, np.ndarray, dict]:
    """The held-out results of ``policy`` (its ``describe()``) as a front measured them: the per-image mean errors
    and score counts that ``bench.accuracy_vs_evals`` saved, so the calibration is measured on the front's images
    (all 2,000, say) without running the policy again. A front of another ``model``, or of other ``weights``
    (:func:`bench.common.weights_of`) than the fit's, is refused: its errors would not be of the calibrated model."""
    from types import SimpleNamespace

    name = Path(json_path).name
    payload = json.loads(Path(json_path).read_text())
    if payload.get("split", "heldout") != "heldout":
        raise SystemExit(f"{name} is a {payload['split']} front; --heldout-front takes held-out ones")
    if model is not None and payload.get("model", model) != model:
        raise SystemExit(f"{name} is a front of {payload['model']}; this fit calibrates {model}")
    why = other_weights(payload.get("weights"), weights or {})
    if why:
        raise SystemExit(f"{name} measured other weights ({why}); measure a front of these weights first")
    rows = [r for r in payload["results"] if r["policy"] == policy]
    if not rows:
        have = "; ".join(r["policy"] for r in payload["results"])
        raise SystemExit(f"{name} has no row of {policy} (it has: {have})")
    npz = Path(json_path).parent / "per_image" / (Path(json_path).stem + ".npz")
    if not npz.is_file():
        raise SystemExit(f"{name}: its per-image errors ({npz}) are missing; --heldout-front reads them")
    z = np.load(npz)
    if rows[0]["name"] not in list(z["names"]):
        raise SystemExit(f"{name}: {npz.name} has no per-image errors of its row {rows[0]['name']!r}")
    i = list(z["names"]).index(rows[0]["name"])
    n = len(z[f"c{i}_label"]) if limit is None else min(limit, len(z[f"c{i}_label"]))
    res = [
        SimpleNamespace(
            label=int(z[f"c{i}_label"][k]),
            mean_errors=z[f"c{i}_mean_errors"][k],
            n_scores=z[f"c{i}_n_scores"][k],
            evaluations=float(z[f"c{i}_evals"][k]),
        )
        for k in range(n)
    ]
    labels = np.asarray(payload["labels"][:n])
    info = {
        "policy": policy,
        "images": n,
        "from_front": name,
        "accuracy": float(np.mean([r.label == y for r, y in zip(res, labels)])),
        "evals_per_image": float(np.mean([r.evaluations for r in res])),
    }
    if payload.get("every", 1) > 1:  # the front's one-in-K subset of the split
        info["every"] = payload["every"]
    return res, labels, info


def metrics(res: list, labels: np.ndarray, temperature: float, floor: float) -> dict:
    probs = [posterior(r.mean_errors, r.n_scores, r.label, temperature, floor) for r in res]
    conf = np.array([p.max() for p in probs])
    correct = np.array([r.label == y for r, y in zip(res, labels)], dtype=float)
    p_true = np.array([p[y] for p, y in zip(probs, labels)])
    return {
        "ece": round(ece(conf, correct), 5),
        "nll": round(nll(p_true), 5),
        "mean_confidence": round(float(conf.mean()), 5),
        "accuracy": float(correct.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=["digits", "numbers", "fashion", "numbers3"])
    ap.add_argument("--policies", nargs="+", default=["halving", "ttest", "exhaustive"])
    ap.add_argument("--train", type=int, default=300, help="train images the fit uses")
    ap.add_argument(
        "--heldout", type=int, default=None, help="held-out images the report uses (400; with --heldout-front: all)"
    )
    ap.add_argument("--exhaustive-grid", type=int, default=10)
    ap.add_argument(
        "--every",
        type=int,
        default=1,
        help=(
            "every K-th image of each split (numbers3's splits are ordered by class: use 10 or 20 there); with"
            " --heldout-front, of the train split only: the held-out images are the front's"
        ),
    )
    ap.add_argument(
        "--heldout-front",
        default=None,
        metavar="JSON",
        help=(
            "measure held-out ECE/NLL on the images of this accuracy_vs_evals result (its saved per-image errors of"
            " the same policy) instead of running the policy on the first --heldout images"
        ),
    )
    ap.add_argument("--no-write", action="store_true", help="report only; leave diffcls.json as it is")
    ap.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "aoti"],
        help="denoiser runtime (aoti: compiled, CPU fp32, about 1.5x eager here; same results within 1e-4)",
    )
    a = ap.parse_args()
    if a.heldout is not None and a.heldout < 1:
        ap.error(f"--heldout must be >= 1, got {a.heldout}")

    model = load_model(a.model)
    if a.backend != "torch":
        from diffcls_fast.export.backends import apply_backend

        model = apply_backend(model, a.backend, batch_sizes=[256])  # the classifier's default batch size
    meta_path = MODELS / a.model / "diffcls.json"
    meta = json.loads(meta_path.read_text())
    cal = dict(meta.get("calibration", {}))
    report = []
    for policy in a.policies:
        opts = {"n_grid": a.exhaustive_grid} if policy == "exhaustive" else {}
        tr, ytr, tr_info = run(model, policy, "train", a.train, opts, a.every)
        t, alpha = fit_calibration([r.mean_errors for r in tr], [finalists(r.n_scores, r.label) for r in tr], ytr)
        kept = {k: v for k, v in cal.get(policy, {}).items() if k == "out_of_distribution"}  # fit_ood.py's
        cal[policy] = kept | {
            "temperature": t,
            "floor": alpha,
            "loss": "l2",
        }  # the classifier's default loss, which run() uses
        cal[policy] |= {
            "fitted_on": f"{a.model} train split, first {len(tr)} images"
            + (f" of every {a.every}th" if a.every > 1 else ""),
            "fitted_with": tr_info["policy"],
            "command": "python " + " ".join(sys.argv),
        }
        if a.heldout_front:
            ho, yho, ho_info = from_front(
                Path(a.heldout_front), tr_info["policy"], a.heldout, model=a.model, weights=weights_of(model)
            )
        else:
            ho, yho, ho_info = run(model, policy, "heldout", a.heldout or 400, opts, a.every)
        row = {
            "policy": policy,
            "train": tr_info,
            "heldout": ho_info,
            "temperature": t,
            "floor": alpha,
            "train_fit": metrics(tr, ytr, t, alpha),
            "heldout_before": metrics(ho, yho, DEFAULT_TEMPERATURE, 0.0),
            "heldout_after": metrics(ho, yho, t, alpha),
        }
        report.append(row)
        b, f = row["heldout_before"], row["heldout_after"]
        print(
            f"{policy:10s} T={t:.3g} floor={alpha:.3g}  held-out ECE {b['ece']:.4f} -> {f['ece']:.4f}, NLL"
            f" {b['nll']:.4f} -> {f['nll']:.4f}",
            end="",
        )
        print(f"  (acc {f['accuracy']:.4f}, {ho_info['evals_per_image']:.0f} evals)", flush=True)
    if not a.no_write:
        meta["calibration"] = cal
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {meta_path}")
    env = environment()
    name = f"calibration_{a.model}_{device_tag()}_{env['date']}.json"
    old = RESULTS / name
    if old.is_file():  # a later run for other policies adds to today's report
        done = {r["policy"] for r in report}
        report = [r for r in json.loads(old.read_text())["results"] if r["policy"] not in done] + report
    p = write_json(name, {"benchmark": "calibration", "model": a.model, **env, "results": report})
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
