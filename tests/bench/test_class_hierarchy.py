"""bench.class_hierarchy: k-means, medoids and the ranks it reports, on small known cases; and a smoke run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.class_hierarchy import hierarchy_rows, kmeans, medoids, ranks

ROOT = Path(__file__).resolve().parents[2]


def test_kmeans_finds_separated_groups_and_their_medoids():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (7, 2)) for c in centers])
    assign, c = kmeans(x, 3, seed=1)
    groups = [set(assign[i * 7 : (i + 1) * 7]) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    med = medoids(x, assign, c)
    for j, m in enumerate(med):
        members = np.flatnonzero(assign == j)
        assert m in members and np.argmin(((x[members] - c[j]) ** 2).sum(1)) == list(members).index(m)


def test_ranks_count_ties_against_the_truth():
    e = np.array([[0.3, 0.1, 0.3, 0.5], [0.2, 0.2, 0.9, 0.0]])
    assert ranks(e, np.array([0, 1])).tolist() == [1, 1]


def test_a_medoid_that_errs_like_its_cluster_ranks_the_true_cluster_first():
    # 3 clusters of 4 classes; every class of the true class's cluster has a low error
    x = np.repeat(np.eye(3) * 10, 4, axis=0) + np.arange(12)[:, None] * 1e-3
    y = np.array([1, 6, 11])
    errors = np.ones((3, 12))
    for i, t in enumerate(y):
        errors[i, (t // 4) * 4 : (t // 4) * 4 + 4] = 0.5
        errors[i, t] = 0.1
    (row,) = hierarchy_rows(errors, y, x, [3], samples=1)
    assert row["true_cluster_rank_max"] == 0 and row["clusters_kept_all"] == 1
    assert row["first_round_evals_all"] == 3 + 4 and row["flat_first_round_evals"] == 12


def test_smoke_on_digits(tmp_path):
    cmd = [sys.executable, "-m", "bench.class_hierarchy", "--model", "digits", "--every", "100", "--limit", "3"]
    cmd += ["--clusters", "2", "3", "--results-dir", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (f,) = tmp_path.glob("class_hierarchy_digits_train_*.json")
    d = json.loads(f.read_text())
    assert d["images"] == 3 and d["classes"] == 10 and [r["k"] for r in d["results"]] == [2, 3]
    assert 0 <= d["flat"]["rank_max"] <= 9

    import bench.report as report

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / f.name).write_text(f.read_text())
    report.ROOT, root = tmp_path, report.ROOT
    try:
        table = "\n".join(report._class_hierarchy())
    finally:
        report.ROOT = root
    assert "| 2 |" in table and "| 3 |" in table and "digits, 3 train images" in table
