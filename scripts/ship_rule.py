"""Ship a rule chosen on a bundled model's train split as that model's tuned rule (``--policy tuned``).

    python -m bench.accuracy_vs_evals --model numbers3 --split train --every 20 --only halving  # the candidates
    python scripts/ship_rule.py --model numbers3 --max-evals 1250 \\
        --result bench/results/accuracy_vs_evals_numbers3_train_every20_cpu_DATE.json

``diffcls-fast tune`` replays rules on score tables of every class at every grid point. At 1,000 classes
those tables cost ``images x 1,000 x grid`` evaluations, so the candidates are run for real instead, as
rows of ``bench.accuracy_vs_evals --split train``. This script takes such a result file and:

1. picks the cheapest row within ``--tolerance`` points of the most accurate row that costs at most
   ``--max-evals`` evaluations an image (or the row named by ``--config``);
2. fits the posterior's temperature and floor on the same train images, from the mean errors and score
   counts the benchmark saved per image (``per_image/<tag>.npz``), with the loss the benchmark ran (l2);
3. writes the rule under ``"tuned"`` in the model folder's ``diffcls.json``, in ``diffcls-fast tune``'s
   format, with the candidates' table and this command.

It refuses a result measured on held-out images: those are for measuring the rule, never for choosing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy_vs_evals import CONFIGS  # noqa: E402
from diffcls_fast import load_model  # noqa: E402
from diffcls_fast.engine.calibration import fit_calibration  # noqa: E402
from diffcls_fast.engine.policies import PolicyConfig, used_options  # noqa: E402
from diffcls_fast.engine.policies.tuned import FORMAT, RULE_KEY, read_rule  # noqa: E402
from diffcls_fast.engine.results import finalists  # noqa: E402
from diffcls_fast.models.bundled import BUNDLED  # noqa: E402


def choose(rows: list[dict], max_evals: float, tolerance: float) -> dict:
    """The cheapest row within ``tolerance`` (a fraction) of the most accurate row costing <= ``max_evals``."""
    allowed = [r for r in rows if r["evals_per_image"] <= max_evals]
    if not allowed:
        cheapest = min(r["evals_per_image"] for r in rows)
        raise SystemExit(f"ship_rule: no row costs at most {max_evals:g} evaluations an image (cheapest {cheapest:g})")
    best = max(r["accuracy"] for r in allowed)
    near = [r for r in allowed if r["accuracy"] >= best - tolerance - 1e-12]
    return min(near, key=lambda r: (r["evals_per_image"], -r["accuracy"], r["name"]))


def per_image(result: Path, name: str) -> dict[str, np.ndarray]:
    """The saved per-image arrays of configuration ``name`` (label, mean_errors, n_scores, ...)."""
    npz = result.parent / "per_image" / (result.stem + ".npz")
    if not npz.is_file():
        raise SystemExit(f"ship_rule: {npz} is missing (bench.accuracy_vs_evals writes it beside {result.name})")
    z = np.load(npz)
    names = list(z["names"])
    if name not in names:
        raise SystemExit(f"ship_rule: {npz.name} holds no per-image rows for {name!r}")
    i = names.index(name)
    return {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"c{i}_")}


def rule_for(model: str, result: Path, max_evals: float, tolerance_points: float, config: str | None) -> dict:
    payload = json.loads(result.read_text())
    if payload.get("split", "heldout") != "train":
        raise SystemExit(
            f"ship_rule: {result.name} was measured on the {payload.get('split', 'heldout')!r} split; choose on"
            " 'train' (held-out images are for measuring the rule, never for choosing it)"
        )
    if payload["model"] != model:
        raise SystemExit(f"ship_rule: {result.name} measured model {payload['model']!r}, not {model!r}")
    rows = payload["results"]
    if config is not None:
        picked = next((r for r in rows if r["name"] == config), None)
        if picked is None:
            raise SystemExit(f"ship_rule: {result.name} has no row {config!r}")
    else:
        picked = choose(rows, max_evals, tolerance_points / 100)
    policy, opts = next((p, o) for n, p, o in CONFIGS[model] if n == picked["name"])
    if policy == "tuned":
        raise SystemExit("ship_rule: a tuned rule cannot ship another tuned rule")
    arrays = per_image(result, picked["name"])
    labels = np.asarray(payload["labels"])
    fin = [finalists(n, int(lab)) for n, lab in zip(arrays["n_scores"], arrays["label"])]
    t, f = fit_calibration(list(arrays["mean_errors"].astype(np.float64)), fin, list(labels))
    bundle = load_model(model)
    return {
        "format": FORMAT,
        "model": {"name": model, "fingerprint": bundle.fingerprint},
        "policy": used_options(PolicyConfig(policy, **opts).to_dict()),  # every option: later defaults cannot move it
        "calibration": {"temperature": t, "floor": f, "loss": "l2"},
        "tuning": {
            "source": f"{model} train split, {payload['images']} images (every {payload.get('every', 1)}th)",
            "how": (
                f"bench.accuracy_vs_evals --split train ran the candidates; {picked['name']!r} is the cheapest within"
                f" {tolerance_points:g} points of the most accurate candidate at <= {max_evals:g} evaluations"
                if config is None
                else f"bench.accuracy_vs_evals --split train ran the candidates; {picked['name']!r} was named"
            ),
            "result": result.name,
            "chosen": {"name": picked["name"], "accuracy": picked["accuracy"], "evals": picked["evals_per_image"]},
            "candidates": [
                {"name": r["name"], "accuracy": r["accuracy"], "evals": r["evals_per_image"]}
                for r in sorted(rows, key=lambda r: r["evals_per_image"])
            ],
            "command": "python " + " ".join(sys.argv),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--result", required=True, type=Path, help="a bench.accuracy_vs_evals --split train JSON")
    ap.add_argument("--max-evals", type=float, default=float("inf"), help="evaluations an image a rule may cost")
    ap.add_argument("--tolerance", type=float, default=0.5, help="points below the best a cheaper rule may be")
    ap.add_argument("--config", default=None, help="ship this row instead of choosing")
    ap.add_argument("--no-write", action="store_true", help="print the rule; leave diffcls.json as it is")
    a = ap.parse_args()
    rule = rule_for(a.model, a.result, a.max_evals, a.tolerance, a.config)
    read_rule(rule, "the chosen rule")  # the checks --policy tuned applies
    print(json.dumps({k: rule[k] for k in ("policy", "calibration")} | {"chosen": rule["tuning"]["chosen"]}))
    if a.no_write:
        return
    meta_path = BUNDLED[a.model] / "diffcls.json"
    meta = json.loads(meta_path.read_text())
    meta[RULE_KEY] = rule
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote the rule under {RULE_KEY!r} in {meta_path}; use it: --model {a.model} --policy tuned")


if __name__ == "__main__":
    main()
