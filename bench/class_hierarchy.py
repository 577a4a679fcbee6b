"""Would a class hierarchy make the first round cheaper at 1,000 classes? (issue 29; train split only)

At 1,000 classes one sample of every class already costs 1,000 evaluations. The Hierarchical
Diffusion Classifier scores parent nodes first (WordNet hypernyms) and expands only the best ones. A
model with no hierarchy of its own can derive one: cluster the classes' condition vectors (k-means on
the class embedding table of a class-conditional model, on the mean-pooled prompt embeddings of a
text model) and let each cluster's medoid class stand for it. A two-level first round then costs
``k`` medoid evaluations plus the members of the kept clusters, instead of every class.

This measures, on the train split, what decides whether that can work:

* **flat**: the rank of the true class among all classes after ``--samples`` shared samples in the
  timestep band (what a one-sample first round of ``halving`` must keep);
* **per k**: the rank of the true class's cluster when clusters are ranked by their medoid's error,
  the clusters a rule must keep to hold the true one for 95% and for all of the images, and what
  that first round would cost against the flat one.

    python -m bench.class_hierarchy --model numbers3 --every 20    # 100 train images, ~2 CPU minutes

Writes bench/results/class_hierarchy_<model>_<split>_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, device_tag, environment
from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.evaluate import load_eval_split


def condition_vectors(model, class_names: list[str]) -> np.ndarray:
    """[C, D] float: one vector per class, what the denoiser is conditioned on (see the module docstring)."""
    if model.cond_kind == "class":
        emb = getattr(model.network, "class_embedding", None)
        if emb is None or not hasattr(emb, "weight"):
            raise SystemExit(f"{model.name}: no class_embedding table to cluster (a UNet2DModel has one)")
        return emb.weight.detach().float().cpu().numpy()[: len(class_names)]
    cond = model.encode_prompts([model.prompt_template.format(c) for c in class_names]).float()
    return cond.reshape(len(class_names), -1, cond.shape[-1]).mean(1).cpu().numpy()


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(assignment [C], centroids [k, D]): Lloyd's algorithm from a k-means++ start, seeded."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.stack(centers)[None]) ** 2).sum(-1), axis=1)
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.stack(centers)
    assign = np.full(len(x), -1)
    for _ in range(iters):
        d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        new = d.argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        c = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
    return assign, c


def medoids(x: np.ndarray, assign: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[k] class ids: the member of each (non-empty) cluster nearest its centroid."""
    out = []
    for j in range(len(centers)):
        members = np.flatnonzero(assign == j)
        out.append(members[((x[members] - centers[j]) ** 2).sum(1).argmin()] if len(members) else -1)
    return np.array(out)


def ranks(errors: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based rank of the true column in each row (ties count against it)."""
    return (errors < errors[np.arange(len(truth)), truth][:, None]).sum(1)


def hierarchy_rows(errors: np.ndarray, y: np.ndarray, vectors: np.ndarray, ks: list[int], samples: int) -> list[dict]:
    n_classes = errors.shape[1]
    rows = []
    for k in ks:
        assign, centers = kmeans(vectors, k)
        med = medoids(vectors, assign, centers)
        live = med >= 0
        cluster_of_truth = assign[y]
        med_err = np.where(live[None], errors[:, np.where(live, med, 0)], np.inf)
        r = ranks(med_err, cluster_of_truth)
        sizes = np.bincount(assign, minlength=k)
        need = {q: int(np.ceil(np.quantile(r, q))) + 1 for q in (0.95, 1.0)}
        # a two-level first round: k medoids, then every member of the kept clusters (the largest ones, at worst)
        largest = np.sort(sizes)[::-1]
        rows.append(
            {
                "k": k,
                "cluster_sizes": [int(sizes[live].min()), int(sizes.max())],
                "true_cluster_rank_max": int(r.max()),
                "true_cluster_first": float(np.mean(r == 0)),
                "clusters_kept_95": need[0.95],
                "clusters_kept_all": need[1.0],
                "first_round_evals_all": int(samples * (k + largest[: need[1.0]].sum())),
                "flat_first_round_evals": samples * n_classes,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="numbers3")
    ap.add_argument("--split", default="train", choices=("train", "tune"), help="never the held-out split")
    ap.add_argument("--every", type=int, default=20, help="every K-th image of the split")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--samples", type=int, default=1, help="shared samples per class in the band (default: 1)")
    ap.add_argument("--clusters", type=int, nargs="+", default=[32, 100])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--results-dir", default=str(RESULTS))
    a = ap.parse_args()
    model = load_model(a.model)
    pil, y, names, _ = load_eval_split(a.model, a.split)
    pil, y = pil[:: a.every], np.asarray(y[:: a.every])
    if a.limit:
        pil, y = pil[: a.limit], y[: a.limit]
    # one round of `samples` shared samples in halving's default band, every class: the first round itself
    clf = DiffusionClassifier(
        model, "halving", rounds=[a.samples], keep=[1], batch_size=a.batch_size, use_cache=False, seed=a.seed
    )
    t0 = time.perf_counter()
    errors = np.stack([r.mean_errors for r in clf.classify(pil, names)])
    seconds = time.perf_counter() - t0
    flat = ranks(errors, y)
    flat_row = {
        "rank_max": int(flat.max()),
        **{f"in_top_{n}": float(np.mean(flat < n)) for n in (1, 10, 25, 50, 100)},
    }
    rows = hierarchy_rows(errors, y, condition_vectors(model, names), a.clusters, a.samples)
    env = environment(model.device)
    payload = {
        "benchmark": "class_hierarchy",
        "model": a.model,
        "split": a.split,
        "every": a.every,
        "images": len(y),
        "classes": len(names),
        "samples": a.samples,
        "policy": clf.policy_cfg.describe(),
        "seconds": round(seconds, 1),
        **env,
        "flat": flat_row,
        "results": rows,
    }
    print(f"flat, {a.samples} sample(s): true class rank max {flat_row['rank_max']}, top-1 {flat_row['in_top_1']:.3f}")
    for r in rows:
        print(
            f"k={r['k']:4d}: true cluster rank max {r['true_cluster_rank_max']}, first {r['true_cluster_first']:.2f},"
            f" keep {r['clusters_kept_95']} (95%) / {r['clusters_kept_all']} (all) clusters:"
            f" {r['first_round_evals_all']} vs {r['flat_first_round_evals']} first-round evals"
        )
    out = Path(a.results_dir) / f"class_hierarchy_{a.model}_{a.split}_{device_tag(model.device)}_{env['date']}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
