"""Per-timestep weights against timestep bands, on `diffcls-fast tune`'s score tables (issue 27's question).

python -m bench.timestep_weights --tables runs/tune/fashion-tune.tables --model fashion --split tune --limit 200

A rule that scores every class at all G grid points may rank classes by the plain mean of the errors, by the
mean inside a band of timesteps (what ``halving`` and ``tune`` use), or by a weighted mean with one weight per
grid point (Clark & Jaini learned such a weighting). The study asks whether weights beat the best band, at the
same evaluations (all G points, and a strided subset of them), with k-fold cross-validation on the tuning
images: each fold's band and weights are chosen on the other folds only.

Weights are fitted two ways on the training folds: by minimising the cross-entropy of softmax(-sum_g w_g e_cg)
over w >= 0 (a logistic fit, L-BFGS), and as inverse variances of the true class's error margin at each point.
No held-out image is read: the tables are tuning images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import environment, write_json


def load_tables(folder: Path, limit: int) -> np.ndarray:
    """``[N, C, G]`` errors from a tune tables folder, parts in image order (``<key>-<start>-<n>.npz``)."""
    parts = sorted(folder.glob("*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    out, seen = [], set()
    for p in parts:
        start, n = (int(x) for x in p.stem.split("-")[1:])
        if start in seen:
            continue
        seen.add(start)
        out.append(np.load(p)["errors"])
    errors = np.concatenate(out)[:limit]
    return errors.astype(np.float64)


def band_masks(timesteps: np.ndarray, T: int) -> dict[str, np.ndarray]:
    from diffcls_fast.tune.replay import band_points, bands

    out = {}
    for band in bands():
        pts = band_points(timesteps, T, band)
        if len(pts):
            m = np.zeros(len(timesteps), bool)
            m[pts] = True
            out[f"[{band[0]:g}, {band[1]:g})"] = m
    return out


def hits(errors: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.argmin(errors @ w, axis=1) == labels


def accuracy(errors: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    return float(hits(errors, labels, w).mean())


def fit_logistic(errors: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """w >= 0 minimising the mean cross-entropy of softmax(-errors @ w), errors standardised per point."""
    import torch

    e = torch.as_tensor(errors)
    scale = e.std(dim=(0, 1)).clamp_min(1e-12)
    e = e / scale
    y = torch.as_tensor(labels)
    raw = torch.zeros(e.shape[2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = torch.nn.functional.softplus(raw)
        loss = torch.nn.functional.cross_entropy(-(e @ w), y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = torch.nn.functional.softplus(raw).detach() / scale
    return w.numpy()


def inverse_variance(errors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean over variance of the margin at each point (the other classes' mean error minus the true class's):
    the weights of a linear discriminant with independent points."""
    n = np.arange(len(labels))
    true = errors[n, labels]  # [N, G]
    others = (errors.sum(axis=1) - true) / (errors.shape[1] - 1)
    margin = others - true
    return np.maximum(margin.mean(axis=0), 0.0) / np.maximum(margin.var(axis=0), 1e-300)


def study(errors: np.ndarray, labels: np.ndarray, timesteps: np.ndarray, T: int, folds: int, points: np.ndarray):
    """Cross-validated accuracy of each way of combining the grid ``points`` (indices into the grid)."""
    e = errors[:, :, points]
    masks = {k: m[points] for k, m in band_masks(timesteps, T).items()}
    masks = {k: m for k, m in masks.items() if m.any()}
    rng = np.random.default_rng(0)
    fold = rng.permutation(len(labels)) % folds
    right = {k: np.zeros(len(labels), bool) for k in ("uniform", "best band", "logistic weights", "inverse-variance")}
    chosen = []
    for f in range(folds):
        tr, te = fold != f, fold == f
        best = max(masks, key=lambda k: (accuracy(e[tr], labels[tr], masks[k].astype(float)), -masks[k].sum()))
        chosen.append(best)
        for name, w in (
            ("uniform", np.ones(len(points))),
            ("best band", masks[best].astype(float)),
            ("logistic weights", fit_logistic(e[tr], labels[tr])),
            ("inverse-variance", inverse_variance(e[tr], labels[tr])),
        ):
            right[name][te] = hits(e[te], labels[te], w)
    out = {k: float(v.mean()) for k, v in right.items()}
    # paired: images the logistic weights get right and the best band wrong, and the reverse
    duel = [
        int((right["logistic weights"] & ~right["best band"]).sum()),
        int((~right["logistic weights"] & right["best band"]).sum()),
    ]
    w_all = fit_logistic(e, labels)
    return out, duel, chosen, (w_all / w_all.max()).round(3).tolist()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", type=Path, required=True, help="a tune tables folder (FILE.tables)")
    ap.add_argument("--model", required=True, help="bundled model the tables were scored with")
    ap.add_argument("--split", required=True, choices=["train", "tune"])
    ap.add_argument("--limit", type=int, required=True, help="tuning images in the tables")
    ap.add_argument("--order", choices=["balanced", "first"], default="balanced", help="how tune took the images")
    ap.add_argument("--grid", type=int, default=25)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    from diffcls_fast.engine.timesteps import li_grid
    from diffcls_fast.evaluate import load_eval_split
    from diffcls_fast.models import load_model
    from diffcls_fast.tune.run import balanced_order

    _, labels, _, _ = load_eval_split(args.model, args.split, None)
    labels = np.asarray(labels)
    order = balanced_order(labels) if args.order == "balanced" else np.arange(len(labels))
    labels = labels[order][: args.limit]
    errors = load_tables(args.tables, args.limit)
    if len(errors) != len(labels):
        raise SystemExit(f"the tables hold {len(errors)} images, --limit says {len(labels)}")
    T = load_model(args.model).num_timesteps
    timesteps = li_grid(T, args.grid)
    rows = []
    subsets = [("all grid points", np.arange(args.grid))]
    subsets += [(f"every {k} points", np.arange(0, args.grid, k)) for k in (2, 3, 4)]
    for name, pts in subsets:
        acc, duel, chosen, w = study(errors, labels, timesteps, T, args.folds, pts)
        rows.append(
            {
                "points": name,
                "evaluations_per_class": len(pts),
                "accuracy": acc,
                "weights_vs_band_images": duel,
                "bands": chosen,
                "logistic_weights_all_images": w,
            }
        )
        print(
            f"{args.model} {name} ({len(pts)} evals/class): "
            + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
            + f"; weights right where the band is wrong on {duel[0]} images, the reverse on {duel[1]}"
        )
    payload = {
        "benchmark": "timestep_weights",
        **environment("cpu"),
        "model": args.model,
        "split": args.split,
        "images": len(labels),
        "grid_timesteps": timesteps.tolist(),
        "folds": args.folds,
        "results": rows,
    }
    if not args.no_save:
        name = f"timestep_weights_{args.model}_cpu_{payload['date']}.json"
        print(f"wrote {write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
