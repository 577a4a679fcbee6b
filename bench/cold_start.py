"""Cold start of the one-shot CLI: wall and CPU (user + sys) time of fresh processes.

python -m bench.cold_start [--runs 5] [--label after] [--out bench/results/cold_start_cpu_2026-12-01.json]

Each command runs ``--runs`` times in a fresh ``python -m diffcls_fast.cli`` process
(the package need not be installed; an installed ``diffcls-fast`` entry point costs the
same imports). Reports the median wall time and the median user + sys CPU time of
the child (from ``os.wait4``'s rusage, less noisy than wall time on a shared CPU).
A run with ``--label`` is merged into the JSON file under that label, so "before" and
"after" sit side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "help": ["--help"],
    "classify_one_digit": ["classify", "examples/digit-7.png"],
}


def run_once(args: list[str], root: Path = ROOT, threads: int | None = None) -> tuple[float, float]:
    """(wall seconds, user + sys CPU seconds) of one fresh process running the CLI of the tree at ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffcls_fast.cli", *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}: {err.strip()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _summary(args: list[str], walls, cpus, threads) -> dict:
    return {
        "command": "python -m diffcls_fast.cli " + " ".join(args),
        "torch_threads": threads or "default",
        "runs": len(walls),
        "wall_median_s": round(statistics.median(walls), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
        "wall_s": [round(w, 3) for w in walls],
        "cpu_s": [round(c, 3) for c in cpus],
    }


def measure(runs: int, roots: dict[str, Path], threads: int | None) -> dict[str, dict]:
    """Each command ``runs`` times per tree, the trees alternating run by run (drift on a shared CPU hits
    both alike)."""
    out: dict[str, dict] = {label: {} for label in roots}
    for name, args in COMMANDS.items():
        for root in roots.values():
            run_once(args, root, threads)  # warm the OS file cache; not counted
        samples: dict[str, list] = {label: [] for label in roots}
        for _ in range(runs):
            for label, root in roots.items():
                samples[label].append(run_once(args, root, threads))
        for label in roots:
            walls, cpus = zip(*samples[label])
            out[label][name] = _summary(args, walls, cpus, threads)
            s = out[label][name]
            print(
                f"{label} {name}: wall median {s['wall_median_s']:.2f} s, user+sys median {s['cpu_median_s']:.2f} s "
                f" ({runs} fresh processes)"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--label", default="after", help="key for this tree's numbers in the JSON file (e.g. before, after)"
    )
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("LABEL", "DIR"),
        default=None,
        help="also measure the checkout in DIR (e.g. the commit before a change) under LABEL, alternating",
    )
    ap.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="also time 'classify --server URL' of the same digit (a warm diffcls-fast serve at URL)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the measured processes (default: torch's)"
    )
    ap.add_argument(
        "--note", default="", help="free text stored with this run (e.g. the commit, whether the CPU was shared)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cold_start_cpu_2026-12-01.json"))
    a = ap.parse_args(argv)
    import platform

    if a.server:
        COMMANDS["classify_one_digit_via_server"] = ["classify", "examples/digit-7.png", "--server", a.server]
    roots = {a.label: ROOT} | ({a.compare[0]: Path(a.compare[1]).resolve()} if a.compare else {})
    res = measure(a.runs, roots, a.threads)
    p = Path(a.out)
    data = json.loads(p.read_text()) if p.exists() else {}
    data.setdefault("date", "2026-12-01")
    data["device"] = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    data.setdefault("python", platform.python_version())
    data["PYTHONDONTWRITEBYTECODE"] = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    key = f"threads={a.threads}" if a.threads else "threads=default"
    for label, root in roots.items():
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
            ).stdout.strip()
            or "not a git checkout"
        )
        data.setdefault("runs", {}).setdefault(label, {})[key] = {
            "tree": str(root),
            "commit": commit,
            "note": a.note,
            **res[label],
        }
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()


def render_table(data: dict, json_name: str) -> list[str]:
    """docs/performance.md lines (used by bench/report.py): median wall and user + sys CPU time of fresh processes."""
    rows = []
    for label, by_threads in data["runs"].items():
        for threads, run in by_threads.items():
            for s in run.values():
                if isinstance(s, dict) and "wall_median_s" in s:
                    cmd = s["command"].replace("python -m diffcls_fast.cli", "diffcls-fast")
                    rows.append(
                        f"| {label} | {threads.removeprefix('threads=')} | `{cmd}` | {s['wall_median_s']:.2f} |"
                        f" {s['cpu_median_s']:.2f} |"
                    )
    return [
        (
            f"**Cold start** — median of {data['runs'][next(iter(data['runs']))]['threads=default']['help']['runs']}"
            f" fresh processes (`python -m diffcls_fast.cli`, the package not installed), {data['device']},"
            f" {data['date']} ([json](../bench/results/{json_name})):"
        ),
        "",
        "| tree | torch threads | command | wall s | user+sys s |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
