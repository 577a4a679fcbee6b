"""Zero-shot wording on the ``fashion`` model: class prompts never seen in training, against the trained ones.

    python -m bench.fashion_wording                  # exhaustive-10 on the first 200 held-out images
    python -m bench.fashion_wording --limit 100 --n-grid 5

The model was trained on six caption templates around the ten class names ("a photo of a sneaker", "a
sneaker", ...; ``diffcls_fast.data.fashion.TEMPLATES``) through a frozen pretrained text encoder
(all-MiniLM-L6-v2). What that encoder buys is measured here: the same images and noise, scored with

* the trained prompt (template 0), and the bare trained name (the "{name}" template);
* a template never used in training ("an image of a {name}");
* synonyms and paraphrases never seen in training ("a photo of a jumper", "a photo of a purse", ...);
* prompt ensembles (a class's error is the mean over its prompts; each prompt costs one evaluation).

Every set is one row, written as soon as it is measured (a rerun skips finished rows).
Writes bench/results/fashion_wording_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import RESULTS, environment, other_weights, weights_of, write_json
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data import fashion
from diffcls_fast.engine.prompts import ClassSpec

# Label order: t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot.
SYNONYMS = [
    ["a photo of a tee", "a photo of a top", "a photo of a short-sleeved top"],
    ["a photo of a pair of pants", "a photo of jeans", "a photo of slacks"],
    ["a photo of a sweater", "a photo of a jumper", "a photo of a knitted sweater"],
    ["a photo of a gown", "a photo of a frock", "a photo of a summer dress"],
    ["a photo of a jacket", "a photo of an overcoat", "a photo of a parka"],
    ["a photo of a flip-flop", "a photo of an open shoe", "a photo of a summer shoe"],
    ["a photo of a blouse", "a photo of a button-up shirt", "a photo of a collared shirt"],
    ["a photo of a running shoe", "a photo of a trainer", "a photo of a sports shoe"],
    ["a photo of a purse", "a photo of a handbag", "a photo of a tote"],
    ["a photo of a boot", "a photo of a short boot", "a photo of a leather boot"],
]


def prompt_sets() -> dict[str, list[list[str]]]:
    names = fashion.CLASS_NAMES
    article = {n: ("an" if n[0] in "aeiou" else "a") for n in names}
    return {
        "trained prompt (template 0)": [[fashion.prompt(c)] for c in range(10)],
        "trained name alone": [[n] for n in names],
        "unseen template: an image of a NAME": [[f"an image of {article[n]} {n}"] for n in names],
        "synonym 1 (unseen words)": [[s[0]] for s in SYNONYMS],
        "synonym 2 (unseen words)": [[s[1]] for s in SYNONYMS],
        "ensemble of 3 synonyms": SYNONYMS,
        "ensemble of 3 trained templates": [[fashion.prompt(c, t) for t in (0, 1, 2)] for c in range(10)],
    }


def spec_of(per_class: list[list[str]]) -> ClassSpec:
    prompts = [p for ps in per_class for p in ps]
    ids, start = [], 0
    for ps in per_class:
        ids.append(np.arange(start, start + len(ps)))
        start += len(ps)
    return ClassSpec(list(fashion.CLASS_NAMES), prompts, ids).validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--n-grid", type=int, default=10)
    a = ap.parse_args()
    env = environment("cpu")
    name = f"fashion_wording_cpu_{env['date']}.json"
    path = RESULTS / name
    model = load_model("fashion")
    result = json.loads(path.read_text()) if path.is_file() else {"benchmark": "fashion_wording", "rows": []}
    why = other_weights(result.get("weights"), weights_of(model))
    if why:
        print(f"{name}: its rows measured other weights ({why}); measuring again")  # two checkpoints compare nothing
        result["rows"] = []
    result.update(env | {"images": a.limit, "policy": f"exhaustive(grid={a.n_grid})", "weights": weights_of(model)})
    done = {r["set"] for r in result["rows"]}
    pil, labels, _ = fashion.load_split("heldout")
    pil, labels = pil[: a.limit], labels[: a.limit]
    clf = DiffusionClassifier(model, "exhaustive", n_grid=a.n_grid, use_cache=False)
    for set_name, per_class in prompt_sets().items():
        if set_name in done:
            continue
        t0 = time.perf_counter()
        res = clf.classify(pil, spec_of(per_class))
        pred = np.array([r.label for r in res])
        per_class_acc = [float((pred[labels == c] == c).mean()) for c in range(10)]
        row = {
            "set": set_name,
            "prompts": per_class,
            "accuracy": float((pred == labels).mean()),
            "per_class_accuracy": dict(zip(fashion.CLASS_NAMES, per_class_acc)),
            "evals_per_image": float(np.mean([r.evaluations for r in res])),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        result["rows"].append(row)
        write_json(name, result)
        print(f"{set_name}: {row['accuracy']:.3f} at {row['evals_per_image']:.0f} evals ({row['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
