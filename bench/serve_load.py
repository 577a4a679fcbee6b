"""Load test of ``diffcls-fast serve``: N concurrent clients on loopback, against one request at a time.

python -m bench.serve_load [--model digits] [--policy ttest halving] [--clients 1 4 16 64] [--requests 64] \
    [--seconds 60]

For each policy it starts one server process (``diffcls-fast serve --port 0 --policy P``),
waits for ``/healthz``, sends one warm-up request (reported separately), then for each
client count N runs N threads, each with its own HTTP connection, sending one-image
requests (held-out digits, in order) back to back until ``--requests`` answers or
``--seconds`` pass, whichever comes first. N = 1 is "one request at a time". Reported
per N: requests/s, latency p50/p95/p99, denoiser evaluations/s and batch fill (from
the server's /metrics), evaluations spent per request, accuracy. Writes
``bench/results/serve_load_<model>_<device>_<date>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def start_server(model: str, policy: str, extra: list[str], threads: int | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server process
    cmd = [
        sys.executable,
        "-m",
        "diffcls_fast.cli",
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--policy",
        policy,
        "--max-queue",
        "4096",
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"serving on (http://\S+) ", line)
    if m is None:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    url = m.group(1)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain its stderr
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 600:
            raise SystemExit("server did not become ready")
        time.sleep(0.2)


def digits_pngs(n: int) -> tuple[list[bytes], list[int]]:
    from diffcls_fast.data.digits import load_split

    pil, y, _ = load_split("heldout")
    out = []
    for im in pil[:n]:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, [int(v) for v in y[:n]]


def metrics(url: str) -> dict[str, float]:
    from diffcls_fast.client import Client
    from diffcls_fast.server.metrics import parse

    with Client(url) as c:
        return parse(c.metrics())


def run_level(
    url: str, n_clients: int, pngs: list[bytes], labels: list[int], max_requests: int, max_seconds: float
) -> dict:
    from diffcls_fast.client import Client

    lock = threading.Lock()
    counter = iter(range(max_requests))
    records: list[tuple[float, bool, int]] = []  # (latency s, correct, evaluations spent)
    stop_at = time.monotonic() + max_seconds
    m0 = metrics(url)

    def worker():
        with Client(url, timeout=600) as c:
            while time.monotonic() < stop_at:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                i = k % len(pngs)
                t = time.perf_counter()
                r = c.classify([pngs[i]], names=[f"digit-{i}"])[0]
                lat = time.perf_counter() - t
                with lock:
                    records.append((lat, r["label_index"] == labels[i], r["evaluations_spent"]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(n_clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    m1 = metrics(url)
    lat = np.array([r[0] for r in records])
    rows = m1["diffcls_evaluations_total"] - m0["diffcls_evaluations_total"]
    pad = m1["diffcls_padded_rows_total"] - m0["diffcls_padded_rows_total"]
    return {
        "clients": n_clients,
        "requests": len(records),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(records) / wall, 3),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 4),
        "latency_p99_s": round(float(np.percentile(lat, 99)), 4),
        "latency_mean_s": round(float(lat.mean()), 4),
        "evals_per_s": round(rows / wall, 1),
        "evals_spent_per_request": round(float(np.mean([r[2] for r in records])), 1),
        "batch_fill": round(rows / (rows + pad), 4) if rows + pad else 1.0,
        "batches": int(m1["diffcls_batches_total"] - m0["diffcls_batches_total"]),
        "accuracy": round(float(np.mean([r[1] for r in records])), 4),
    }


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for run in data["runs"]:
        n = [lv["clients"] for lv in run["levels"]]
        a1.plot(n, [lv["requests_per_s"] for lv in run["levels"]], "o-", label=run["policy"])
        a2.plot(n, [lv["latency_p50_s"] for lv in run["levels"]], "o-", label=f"{run['policy']} p50")
        a2.plot(n, [lv["latency_p99_s"] for lv in run["levels"]], "s--", label=f"{run['policy']} p99")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    a1.set_ylabel("requests / s (one image each)")
    a2.set_ylabel("latency (s)")
    a2.set_yscale("log")
    fig.suptitle(f"diffcls-fast serve, {data['model']}, {data['device']}, {data['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render_table(data: dict, json_name: str) -> list[str]:
    """docs/performance.md lines (used by bench/report.py)."""
    out = [
        (
            f"**Server under load** — {data['model']}, one digit per request, N concurrent HTTP clients on loopback,"
            f" {data['device']}, {data['date']} ([json](../bench/results/{json_name}),"
            f" [plot](../bench/results/{json_name.replace('.json', '.png')})):"
        ),
        "",
        (
            "| policy | clients | requests | requests/s | vs 1 client | p50 s | p95 s | p99 s | evals/s | evals /"
            " request | batch fill | accuracy |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        base = run["levels"][0]["requests_per_s"]
        for lv in run["levels"]:
            out.append(
                f"| {run['policy']} | {lv['clients']} | {lv['requests']} | {lv['requests_per_s']:.2f} |"
                f" {lv['requests_per_s'] / base:.2f}x | {lv['latency_p50_s']:.3f} | {lv['latency_p95_s']:.3f} |"
                f" {lv['latency_p99_s']:.3f} | {lv['evals_per_s']:.0f} | {lv['evals_spent_per_request']:.0f} |"
                f" {lv['batch_fill']:.3f} | {lv['accuracy']:.3f} |"
            )
    warm = ", ".join(f"{r['policy']} {r['warmup_request_s']:.2f} s" for r in data["runs"])
    out += ["", f"Warm-up (first request after /healthz): {warm}. {data.get('note', '')}".rstrip(), ""]
    return out


def main(argv: list[str] | None = None) -> None:
    import platform

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--policy", nargs="+", default=["ttest", "halving"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=64, help="answers per client count at most (default: 64)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per client count at most (default: 60)")
    ap.add_argument("--server-args", default="", help="extra arguments for diffcls-fast serve, e.g. '--batch-size 128'")
    ap.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="torch threads of the server process (OMP_NUM_THREADS; default: torch's)",
    )
    ap.add_argument("--note", default="", help="stored with the results (e.g. whether the CPU was shared)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.model != "digits":
        raise SystemExit("only the digits model has bundled one-image requests here")
    pngs, labels = digits_pngs(397)
    data = {
        "model": a.model,
        "date": "2026-12-01",
        "device": (
            f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores (server and clients on the same"
            " machine)"
        ),
        "server_args": a.server_args,
        "server_threads": a.server_threads,
        "max_requests": a.requests,
        "max_seconds": a.seconds,
        "note": a.note,
        "runs": [],
    }
    for policy in a.policy:
        proc, url = start_server(a.model, policy, a.server_args.split(), a.server_threads)
        try:
            from diffcls_fast.client import Client

            with Client(url) as c:
                t = time.perf_counter()
                c.classify([pngs[-1]])
                warm = time.perf_counter() - t
            run = {"policy": policy, "warmup_request_s": round(warm, 3), "levels": []}
            for n in a.clients:
                lv = run_level(url, n, pngs, labels, max(a.requests, n), a.seconds)
                run["levels"].append(lv)
                print(
                    f"{policy} N={n}: {lv['requests']} requests, {lv['requests_per_s']:.2f}/s, p50"
                    f" {lv['latency_p50_s']:.3f} s, p99 {lv['latency_p99_s']:.3f} s, {lv['evals_per_s']:.0f} evals/s,"
                    f" fill {lv['batch_fill']:.3f}",
                    flush=True,
                )
            data["runs"].append(run)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"serve_load_{a.model}_cpu_2026-12-01.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import json

    out.write_text(json.dumps(data, indent=2) + "\n")
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    print("\n".join(render_table(data, out.name)))


if __name__ == "__main__":
    main()
