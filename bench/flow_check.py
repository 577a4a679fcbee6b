"""Issue 28's method check: the flow-matching ``numbers-flow`` against the DDPM ``numbers``, and the naive port.

    python -m bench.flow_check --limit 1000                       # halving defaults, all 1,000 held-out pairs
    python -m bench.flow_check --limit 200 --policy exhaustive --n-grid 5 --tag exh5

Three runs of one policy, seed and set of held-out pairs:

* ``numbers``: the DDPM model (ε objective), scored as DDPM;
* ``numbers-flow``: the same architecture, data and budget trained as rectified flow, scored as flow
  (x_t = (1 − σ) x0 + σ ε, the velocity target ε − x0);
* ``numbers-flow naive``: the flow network scored the way a straight port of a DDPM classifier scores it:
  noised with ``numbers``' ᾱ table and compared with ε. The network and its timestep input are unchanged;
  only the noising and the target are the DDPM ones. This is the failure users hit (issue #32 of the official
  Diffusion Classifier repository: an SD3.5 port at 17.6% on Food-101).

Accuracy on the same pairs, evaluations per image, and how often the runs agree. Resumable: the pairs run in
parts of ``--chunk``, each part's picks kept in the result file, and a finished run is skipped; the weights of
each model are recorded, and a saved run of other weights is measured again (or dropped, when not asked for). One
file holds one policy: another policy needs another ``--tag``. A smaller ``--limit`` reports the first pairs of
longer runs.

Writes bench/results/flow_check_<device>_<date>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from bench.common import RESULTS, device_tag, environment, weights_of, write_json

RUNS = ("numbers", "numbers-flow", "numbers-flow naive")


def naive_port(flow, ddpm):
    """The flow bundle scored as DDPM: ``ddpm``'s ᾱ table, the ε target, no σ table."""
    if flow.prediction_type != "flow":
        raise SystemExit(f"{flow.name} is not a flow-matching model (prediction {flow.prediction_type!r})")
    return dataclasses.replace(flow, prediction_type="epsilon", sigmas=None, alphas_cumprod=ddpm.alphas_cumprod)


def policy_args(a) -> list:
    """What a saved run must share with this one to be resumed or reported beside it."""
    return [a.policy, a.n_grid if a.policy == "exhaustive" else None]


def policy_options(a) -> dict:
    opts = {}
    if a.policy == "exhaustive":
        opts["n_grid"] = a.n_grid
    return opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=1000, help="first N held-out pairs (default: all 1,000)")
    ap.add_argument("--policy", default="halving", choices=["halving", "exhaustive"])
    ap.add_argument("--n-grid", type=int, default=10, help="exhaustive: timesteps per class")
    ap.add_argument("--chunk", type=int, default=100, help="pairs per saved part")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    from diffcls_fast import DiffusionClassifier, load_model
    from diffcls_fast.data import numbers

    env = environment("cpu")
    name = f"flow_check_{device_tag('cpu')}_{env['date']}" + (f"_{a.tag}" if a.tag else "")
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    images, labels, _ = numbers.load_split("heldout")
    images, labels = images[: a.limit], np.asarray(labels[: a.limit])
    ddpm = load_model("numbers", device="cpu")
    flow = load_model("numbers-flow", device="cpu")
    bundles = {"numbers": ddpm, "numbers-flow": flow, "numbers-flow naive": naive_port(flow, ddpm)}
    weights = {run: weights_of(ddpm if run == "numbers" else flow) for run in RUNS}
    kept = {}
    for run, row in old.get("runs", {}).items():
        if row.get("policy_args") != policy_args(a):
            raise SystemExit(
                f"{path.name} holds runs of policy {row.get('policy_args')}, not {policy_args(a)}: use another --tag"
            )
        if row.get("weights") == weights.get(run):
            kept[run] = row
        else:
            print(f"{run}: the saved run measured other weights; {'measuring again' if run in a.runs else 'dropped'}")

    runs = {}
    for run in a.runs:
        bundle = bundles[run]
        prev = kept.get(run)
        row = prev or {"weights": weights[run], "policy_args": policy_args(a), "picks": [], "evals": []}
        clf = DiffusionClassifier(bundle, a.policy, batch_size=a.batch_size, use_cache=False, **policy_options(a))
        row["policy"] = clf.policy_cfg.describe()
        row.setdefault("seconds", 0.0)
        while len(row["picks"]) < len(images):
            s = len(row["picks"])
            part = images[s : s + a.chunk]
            t0 = time.perf_counter()
            results = clf.classify(part, numbers.CLASS_NAMES)
            row["seconds"] = round(row["seconds"] + time.perf_counter() - t0, 1)
            row["picks"] += [int(r.label) for r in results]
            row["evals"] += [float(r.evaluations) for r in results]
            runs[run] = row
            write_json(path.name, _payload(a, env, {**kept, **runs}, labels))
            print(
                f"{run}: {len(row['picks'])}/{len(images)} pairs, accuracy so far {_acc(row, labels):.4f}", flush=True
            )
        runs[run] = row
    payload = _payload(a, env, {**kept, **runs}, labels)
    write_json(path.name, payload)
    for run, s in payload["summary"].items():
        print(
            f"{run:20s} accuracy {s['accuracy']:.4f} on {s['images']} pairs at {s['evals_per_image']:.0f} evals/image"
        )
    for k, v in payload.get("agreement", {}).items():
        print(f"agreement {k}: {v:.4f}")


def _acc(row: dict, labels: np.ndarray) -> float:
    """Accuracy on the pairs both the run and ``labels`` cover (a run saved by a longer --limit is cut)."""
    picks = np.asarray(row["picks"][: len(labels)])
    return float(np.mean(picks == labels[: len(picks)])) if len(picks) else float("nan")


def _payload(a, env: dict, runs: dict, labels: np.ndarray) -> dict:
    summary = {}
    for run, row in runs.items():
        n = min(len(row["picks"]), len(labels))
        evals = row["evals"][:n]
        summary[run] = {
            "accuracy": round(_acc(row, labels), 5),
            "images": n,
            "complete": n >= len(labels),
            "evals_per_image": float(np.mean(evals)) if evals else None,
            "policy": row.get("policy"),
            "seconds": row.get("seconds"),
        }
    agreement = {}
    if {"numbers", "numbers-flow"} <= runs.keys():
        p, q = np.asarray(runs["numbers"]["picks"]), np.asarray(runs["numbers-flow"]["picks"])
        n = min(len(p), len(q), len(labels))
        if n:
            agreement["numbers vs numbers-flow"] = float(np.mean(p[:n] == q[:n]))
    return {
        "benchmark": "flow_check",
        "split": "heldout",
        "pairs": int(len(labels)),
        "policy": a.policy,
        "n_grid": a.n_grid if a.policy == "exhaustive" else None,
        "summary": summary,
        "agreement": agreement,
        "runs": runs,
        **env,
    }


if __name__ == "__main__":
    main()
