"""Floors of the ``numbers3`` benchmark (1,000 classes): a discriminative baseline, and the diffusion classifier
when a model is given.

    python -m bench.numbers3_floors                                         # the RBF SVC floor (seconds)
    python -m bench.numbers3_floors --policy halving --limit 1000           # and the bundled model, 1 per class
    python -m bench.numbers3_floors --model runs/numbers3-step8000 --policy halving --limit 1000 --tag step8000
    # every row of held-out fronts, digit by digit, beside the SVC on the same triples (no denoiser call)
    python -m bench.numbers3_floors --from-front bench/results/accuracy_vs_evals_numbers3_heldout_every8.json

Reports triple accuracy (all three digits right) and per-position accuracy (first, second, third digit) of

* an RBF SVC (scikit-learn defaults) trained on the 1,400 single training digits, applied to each third of
  every held-out triple (a triple is right when all three digits are), on all 2,000 held-out triples, their
  first 1,000 (one per class: the held-out order is round-robin) and the same triples as the diffusion run;
  with the SVC's accuracy on the 397 single held-out digits, and that accuracy cubed (the triple accuracy
  if its errors were independent);
* with ``--policy``: the diffusion classifier over the 1,000 classes on the first ``--limit`` triples;
* with ``--from-front``: every row of ``bench.accuracy_vs_evals`` held-out fronts of numbers3 (their saved
  per-image picks, so no denoiser call), with the SVC on the same triples (a front's one-in-K subset included).

Writes bench/results/numbers3_floors_<device>_<date>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import device_tag, environment, write_json
from bench.numbers_floors import svc_baseline
from diffcls_fast.data import digits, numbers3

POSITIONS = ("first", "second", "third")


def digit_accuracy(pred: np.ndarray, true: np.ndarray) -> dict:
    """Triple accuracy and each position's digit accuracy of class indices 100a+10b+c."""
    pred, true = np.asarray(pred), np.asarray(true)
    out = {"triple": float(np.mean(pred == true))}
    for k, name in enumerate(POSITIONS):
        place = 10 ** (len(POSITIONS) - 1 - k)
        out[name] = float(np.mean(pred // place % 10 == true // place % 10))
    return {**out, "images": int(len(true))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="numbers3", help="the bundled numbers3 model or a snapshot folder")
    ap.add_argument("--policy", default=None, help="also run the diffusion classifier with this policy (halving, ...)")
    ap.add_argument("--limit", type=int, default=1000, help="first N held-out triples for --policy (N/1000 per class)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument(
        "--from-front",
        nargs="+",
        default=[],
        metavar="JSON",
        help="accuracy_vs_evals results of numbers3 on held-out triples: each row digit by digit, SVC beside",
    )
    a = ap.parse_args()

    triples = numbers3.split_triples("heldout")
    _, y, _ = numbers3.load_split("heldout")
    t0 = time.perf_counter()
    svc = svc_baseline(triples)
    _, labels = digits._load()
    single = svc_baseline([[i] for i in digits.split_indices("heldout")])
    single_acc = float(np.mean(single == labels[digits.split_indices("heldout")]))
    baseline = {
        "all_2000": digit_accuracy(svc, y),
        "first_1000": digit_accuracy(svc[:1000], y[:1000]),
        "single_heldout_digits": single_acc,
        "independent_errors_triple": single_acc**3,
        "chance_triple": 1 / numbers3.N_CLASSES,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    payload = {"benchmark": "numbers3_floors", "model": None, "svc_baseline": baseline}
    if a.from_front:
        payload["fronts"] = [front_by_digit(f, svc, y) for f in a.from_front]

    if a.policy:
        from diffcls_fast import DiffusionClassifier, load_model

        pil = numbers3.load_split("heldout")[0][: a.limit]
        model = load_model(a.model, device=a.device)
        clf = DiffusionClassifier(model, a.policy, batch_size=a.batch_size, use_cache=False)
        t0 = time.perf_counter()
        results = clf.classify(pil, numbers3.CLASS_NAMES, progress=_progress(len(pil)))
        pred = np.array([r.label for r in results])
        diffusion = digit_accuracy(pred, y[: a.limit])
        diffusion.update(
            policy=clf.policy_cfg.describe(),
            evals_per_image=float(np.mean([r.evaluations for r in results])),
            seconds=round(time.perf_counter() - t0, 1),
            run=clf.last_stats.to_dict(),
            predictions=pred.tolist(),
        )
        baseline["same_triples"] = digit_accuracy(svc[: a.limit], y[: a.limit])
        payload.update(model=a.model, training=getattr(model, "path", ""), diffusion=diffusion)

    env = environment(a.device)
    payload = {**payload, **env}
    name = f"numbers3_floors_{device_tag(a.device)}_{env['date']}" + (f"_{a.tag}" if a.tag else "")
    path = write_json(name + ".json", payload)
    s = baseline["all_2000"]
    print(
        f"RBF SVC per digit (2,000 held-out triples): triple {s['triple']:.4f}  first {s['first']:.4f}  second"
        f" {s['second']:.4f}  third {s['third']:.4f}; single held-out digits {single_acc:.4f} (cubed"
        f" {single_acc**3:.4f}); chance {1 / numbers3.N_CLASSES}"
    )
    if a.policy:
        d = payload["diffusion"]
        print(
            f"diffusion {d['policy']}: triple {d['triple']:.4f}  first {d['first']:.4f}  second {d['second']:.4f}"
            f"  third {d['third']:.4f}  ({d['images']} triples, {d['evals_per_image']:.0f} evals/image,"
            f" {d['seconds']:.0f} s); SVC on the same triples {baseline['same_triples']['triple']:.4f}"
        )
    for f in payload.get("fronts", []):
        print(f"{f['from']} ({f['images']} triples): SVC {f['svc_same_triples']['triple']:.4f}", end="")
        print("".join(f"; {r['name']} {r['triple']:.4f}" for r in f["rows"]))
    print(f"wrote {path}")


def front_by_digit(path: str, svc: np.ndarray, y: np.ndarray) -> dict:
    """Every row of a held-out numbers3 front, digit by digit, and the SVC on the same triples."""
    import json
    from pathlib import Path

    p = Path(path)
    payload = json.loads(p.read_text())
    if payload.get("benchmark") != "accuracy_vs_evals" or payload.get("model") != "numbers3":
        raise SystemExit(f"{p}: not a bench.accuracy_vs_evals result on numbers3")
    if payload.get("split", "heldout") != "heldout":
        raise SystemExit(f"{p}: a {payload['split']} front; the floors are on held-out triples")
    idx = np.arange(0, len(y), payload.get("every", 1))[: payload["images"]]
    if not np.array_equal(y[idx], np.asarray(payload["labels"])):
        raise SystemExit(
            f"{p}: its labels are not those of the held-out split's triples {', '.join(map(str, idx[:2]))}, ..."
        )
    z = np.load(p.parent / "per_image" / (p.stem + ".npz"))
    names = list(z["names"])
    rows = []
    for r in payload["results"]:
        if r["name"] in names:
            k = names.index(r["name"])
            acc = digit_accuracy(z[f"c{k}_label"], y[idx])
            rows.append({"name": r["name"], **acc, "evals_per_image": r["evals_per_image"]})
    return {
        "from": p.name,
        "every": payload.get("every", 1),
        "images": len(idx),
        "svc_same_triples": digit_accuracy(svc[idx], y[idx]),
        "rows": sorted(rows, key=lambda r: r["evals_per_image"]),
    }


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="numbers3", unit="img", mininterval=5)


if __name__ == "__main__":
    main()
