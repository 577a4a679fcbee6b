"""``diffcls-fast tune`` measured: the tuned rule on held-out images, by number of tuning images.

    python -m bench.tune_study --model fashion --split tune --limits 50 100 200 --heldout 200
    python -m bench.tune_study --model numbers --split train --limits 200 --heldout 1000
    python -m bench.tune_study --model digits --split train --limits 50 100 200 --heldout 397
    # a finer grid leaves room for Li et al.'s shape (a few samples of all, many of the leaders), at 140 at most
    python -m bench.tune_study --model fashion --split tune --grid 50 --budget 140 --heldout 200 --tag fashion_g50

For each ``--limits`` N: ``tune`` on the first N tuning images (their score tables are shared between the
sizes: a part is keyed by its images), then ``eval`` of the chosen rule on the first ``--heldout`` held-out
images, the same images as the model's accuracy-vs-evaluations front, so the rows compare with it. Also the
``halving`` defaults on the same held-out images. Held-out images are only measured, never read by ``tune``.
Resumable: a finished size is kept in the result file (``--tag``) and skipped.

Writes bench/results/tune_<model>_<device>_<date>.json (or tune_<tag>.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, device_tag, environment, write_json


def _cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "diffcls_fast.cli", *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"diffcls-fast {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _heldout(model: str, n: int, policy: list[str]) -> dict:
    t0 = time.perf_counter()
    s = _cli("eval", "--model", model, "--limit", str(n), *policy)
    keep = ("accuracy", "ece", "nll", "evals_per_image", "policy", "images")
    return {k: s[k] for k in keep} | {"seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="train", choices=["train", "tune"])
    ap.add_argument("--limits", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--heldout", type=int, required=True, help="held-out images to measure on (the front's count)")
    ap.add_argument("--grid", type=int, default=25)
    ap.add_argument("--budget", type=float, default=None, help="tune --budget: most evaluations a rule may cost")
    ap.add_argument("--work", default="bench/cache/tune", help="where the rule files and score tables go")
    ap.add_argument("--tag", default=None)
    a = ap.parse_args()

    env = environment("cpu")
    name = f"tune_{a.tag}.json" if a.tag else f"tune_{a.model}_{device_tag('cpu')}_{env['date']}.json"
    path = RESULTS / name
    result = (
        json.loads(path.read_text()) if path.is_file() else {"benchmark": "tune_study", "model": a.model, "rows": []}
    )
    had = {k: result.get(k) for k in ("grid", "budget")}
    if result["rows"] and had != {"grid": a.grid, "budget": a.budget}:
        raise SystemExit(f"{name} holds rows tuned with {had}; another grid or budget needs another --tag")
    result.update(
        {k: v for k, v in env.items()}
        | {"split": a.split, "grid": a.grid, "budget": a.budget, "heldout_images": a.heldout}
    )
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if "default_halving" not in result:
        result["default_halving"] = _heldout(a.model, a.heldout, ["--policy", "halving"])
        write_json(name, result)
    done = {r["tuning_images"] for r in result["rows"]}
    # one tables folder for every size, so the smaller sizes reuse the largest one's parts
    for n in sorted(set(a.limits) - done, reverse=True):
        out = work / f"{a.model}-{a.split}-{n}.json"
        tables = work / f"{a.model}-{a.split}.tables"
        t0 = time.perf_counter()
        args = ["--limit", str(n), "--grid", str(a.grid), "--out", str(out), "--tables", str(tables)]
        args += [] if a.budget is None else ["--budget", f"{a.budget:g}"]
        r = _cli("tune", "--model", a.model, "--split", a.split, *args)
        tune_seconds = time.perf_counter() - t0
        t = r["tuning"]
        row = {
            "tuning_images": n,
            "rule": t["chosen"]["rule"],
            "policy": r["policy"],
            "calibration": r["calibration"],
            "tuning_accuracy": t["chosen"]["accuracy"],
            "tuning_best": t["best"],
            "tolerance_points": t["chosen"]["tolerance_points"],
            "candidates": t["candidates"],
            "tune_seconds": round(tune_seconds, 1),
            "tables_seconds": t["seconds_tables"],
            "images_scored": t["images_scored"],
            "replay_seconds": t["seconds_replay"],
            "heldout": _heldout(a.model, a.heldout, ["--policy", "tuned", "--tuned", str(out)]),
        }
        result["rows"].append(row)
        result["rows"].sort(key=lambda x: x["tuning_images"])
        write_json(name, result)
        h = row["heldout"]
        print(f"{n} tuning images: {row['rule']}: held-out {h['accuracy']:.4f} at {h['evals_per_image']:.0f} evals")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
