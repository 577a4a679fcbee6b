"""Where the ``fashion`` model's training stands: its loss curves, and held-out accuracy at checkpoints.

    python -m bench.fashion_training --run runs/fashion \\
        --checkpoint 623 runs/fashion/evals/ckptA_exh10.summary.json \\
        --checkpoint 2142 bench/results/accuracy_vs_evals_fashion_heldout200.json

Each ``--checkpoint STEP FILE`` names the unet step a model folder was exported at
(``scripts/train_bundled.py --model fashion --export`` prints it) and the accuracy measured on it: the
summary line of ``diffcls-fast eval --json`` saved to a file, or an accuracy_vs_evals result (its
``--row``, exhaustive-10 by default). Compare checkpoints on the same policy and images.

Writes bench/results/fashion_training_<device>_<date>.{json,png}: the smoothed unet loss every 100
steps (the log's exponential moving average, weight 0.02 per step), the VAE's reconstruction MSE, and
the checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS, environment, write_json


def read_tsv(path: Path, every: int) -> list[list[float]]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    by_step = {int(r[0]): float(r[1]) for r in rows}  # a resumed stage logs some steps twice: the last one counts
    return [[s, round(v, 5)] for s, v in sorted(by_step.items()) if s % every == 0 or s == max(by_step)]


def checkpoint(step: int, path: Path, row_name: str) -> dict:
    text = path.read_text().strip()
    d = json.loads(text.splitlines()[-1] if not text.startswith("{\n") else text)
    if d.get("benchmark") == "accuracy_vs_evals":
        row = next(r for r in d["results"] if r["name"] == row_name)
        return {
            "step": step,
            "policy": row["policy"],
            "images": d["images"],
            "accuracy": row["accuracy"],
            "source": path.name,
        }
    return {"step": step, "policy": d["policy"], "images": d["images"], "accuracy": d["accuracy"], "source": path.name}


def plot(curve: list[list[float]], points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], label="unet loss (eps MSE, smoothed)")
    ax.set_xlabel("unet step (batch 64)")
    ax.set_ylabel("loss")
    ax.set_ylim(0, max(0.4, min(1.0, curve[1][1] if len(curve) > 1 else 1.0)))
    ax2 = ax.twinx()
    ax2.plot([p["step"] for p in points], [p["accuracy"] for p in points], "o-", color="C1", label="held-out accuracy")
    ax2.set_ylabel("held-out accuracy")
    ax2.set_ylim(0.5, 1.0)
    for p in points:
        ax2.annotate(f"{p['accuracy']:.3f}", (p["step"], p["accuracy"]), textcoords="offset points", xytext=(4, 6))
    fig.legend(loc="lower left", bbox_to_anchor=(0.1, 0.15))
    ax.set_title("fashion: training loss and held-out accuracy at checkpoints")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the training run folder (unet_loss.tsv, vae_loss.tsv, args.json)")
    ap.add_argument("--checkpoint", nargs=2, action="append", default=[], metavar=("STEP", "FILE"))
    ap.add_argument("--row", default="exhaustive-10", help="the accuracy_vs_evals row a checkpoint is measured by")
    a = ap.parse_args()
    run = Path(a.run)
    curve = read_tsv(run / "unet_loss.tsv", 100)
    vae = read_tsv(run / "vae_loss.tsv", 100)
    points = [checkpoint(int(s), Path(f), a.row) for s, f in a.checkpoint]
    env = environment("cpu")
    payload = {
        "benchmark": "fashion_training",
        **env,
        "note": "shared 2-core CPU: the training ran at nice 19 beside two other agents' work, one thread",
        "args": json.loads((run / "args.json").read_text()),
        "unet_steps_logged": curve[-1][0] if curve else 0,
        "unet_loss": curve,
        "vae_recon_mse": vae,
        "checkpoints": points,
    }
    name = f"fashion_training_cpu_{env['date']}"
    path = write_json(name + ".json", payload)
    plot(curve, points, RESULTS / (name + ".png"))
    for p in points:
        print(f"step {p['step']:6d}: {p['policy']} on {p['images']} held-out images: {p['accuracy']:.4f}")
    print(f"wrote {path} and its .png")


if __name__ == "__main__":
    main()
