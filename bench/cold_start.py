"""Cold start of the one-shot CLI: wall and CPU (user + sys) time of fresh processes, beside ``import torch``.

python -m bench.cold_start [--runs 7] [--label after] [--threads 1] [--out bench/results/cold_start_cpu_DATE.json]

Each command runs ``--runs`` times in a fresh process (``python -m diffcls_fast.cli``: the package need
not be installed; an installed ``diffcls-fast`` entry point costs the same imports), and so does
``python -c "import torch"``, the floor that any torch program pays. The commands take turns run by run,
so drift on a shared CPU hits them alike, and the cold-start ratio (classify / import torch, of the
medians) is measured within one run. Reports the median wall time and the median user + sys CPU time of
the child (from ``os.wait4``'s rusage, less noisy than wall time on a shared CPU), and the load average
before and after. A run with ``--label`` is merged into the JSON file under that label, so "before"
and "after" sit side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ["-m", "diffcls_fast.cli"]
COMMANDS = {
    "import_torch": ["-c", "import torch"],
    "help": [*CLI, "--help"],
    "classify_one_digit": [*CLI, "classify", "examples/digit-7.png"],
}
# the cold-start ratio: this command's median over import_torch's
RATIO_OF = "classify_one_digit"


def run_once(args: list[str], root: Path = ROOT, threads: int | None = None) -> tuple[float, float]:
    """(wall seconds, user + sys CPU seconds) of one fresh ``python ARGS`` process in the tree at ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}: {err.strip()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _command_line(args: list[str]) -> str:
    if args[:2] == CLI:
        return "python -m diffcls_fast.cli " + " ".join(args[2:])
    return "python " + " ".join(a if " " not in a else f'"{a}"' for a in args)


def _summary(args: list[str], walls, cpus, threads) -> dict:
    return {
        "command": _command_line(args),
        "torch_threads": threads or "default",
        "runs": len(walls),
        "wall_median_s": round(statistics.median(walls), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
        "wall_s": [round(w, 3) for w in walls],
        "cpu_s": [round(c, 3) for c in cpus],
    }


def cold_start_ratio(res: dict) -> dict | None:
    """classify / import torch, of the median wall and of the median CPU time (None without both)."""
    if RATIO_OF not in res or "import_torch" not in res:
        return None
    a, b = res[RATIO_OF], res["import_torch"]
    return {
        "of": f"{RATIO_OF} / import_torch",
        "wall": round(a["wall_median_s"] / b["wall_median_s"], 2),
        "cpu": round(a["cpu_median_s"] / b["cpu_median_s"], 2),
    }


def measure(runs: int, roots: dict[str, Path], threads: int | None) -> dict[str, dict]:
    """Every command ``runs`` times per tree, all of them taking turns run by run."""
    for args in COMMANDS.values():
        for root in roots.values():
            run_once(args, root, threads)  # warm the OS file cache; not counted
    samples = {label: {name: [] for name in COMMANDS} for label in roots}
    for _ in range(runs):
        for name, args in COMMANDS.items():
            for label, root in roots.items():
                samples[label][name].append(run_once(args, root, threads))
    out: dict[str, dict] = {}
    for label in roots:
        out[label] = {}
        for name, args in COMMANDS.items():
            walls, cpus = zip(*samples[label][name])
            s = out[label][name] = _summary(args, walls, cpus, threads)
            print(
                f"{label} {name}: wall median {s['wall_median_s']:.2f} s, user+sys median {s['cpu_median_s']:.2f} s"
                f"  ({runs} fresh processes)"
            )
        ratio = cold_start_ratio(out[label])
        if ratio:
            out[label]["ratio"] = ratio
            print(f"{label} cold-start ratio {ratio['of']}: wall {ratio['wall']:.2f}x, user+sys {ratio['cpu']:.2f}x")
    return out


def main(argv: list[str] | None = None) -> None:
    today = datetime.date.today().isoformat()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
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
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the measured processes (default: unset)"
    )
    ap.add_argument(
        "--note", default="", help="free text stored with this run (e.g. the commit, whether the CPU was shared)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"cold_start_cpu_{today}.json"))
    a = ap.parse_args(argv)
    import platform

    if a.server:
        COMMANDS["classify_one_digit_via_server"] = [*CLI, "classify", "examples/digit-7.png", "--server", a.server]
    roots = {a.label: ROOT} | ({a.compare[0]: Path(a.compare[1]).resolve()} if a.compare else {})
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.time()
    res = measure(a.runs, roots, a.threads)
    load_after = [round(x, 2) for x in os.getloadavg()]
    p = Path(a.out)
    data = json.loads(p.read_text()) if p.exists() else {}
    data.setdefault("date", today)
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
            "started_utc": datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).strftime("%H:%M"),
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": load_after,
            **res[label],
        }
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {p}")


if __name__ == "__main__":
    main()


def render_table(data: dict, json_name: str) -> list[str]:
    """docs/performance.md lines (used by bench/report.py): median wall and user + sys CPU time of fresh processes,
    and the cold-start ratio to ``import torch`` measured in the same run."""
    rows, ratios = [], []
    for label, by_threads in data["runs"].items():
        for threads, run in by_threads.items():
            th = threads.removeprefix("threads=")
            load = run.get("loadavg_1_5_15_before")
            for s in run.values():
                if isinstance(s, dict) and "wall_median_s" in s:
                    cmd = s["command"].replace("python -m diffcls_fast.cli", "diffcls-fast")
                    rows.append(f"| {label} | {th} | `{cmd}` | {s['wall_median_s']:.2f} | {s['cpu_median_s']:.2f} |")
            if "ratio" in run:
                r = run["ratio"]
                when = f"load average {load[0]:.1f} at the start" if load else ""
                ratios.append(
                    f"- {label}, torch threads {th} ({when}): classify / `import torch` = **{r['wall']:.2f}x** wall,"
                    f" {r['cpu']:.2f}x user+sys"
                )
    first = next(iter(data["runs"].values()))
    n = next(s["runs"] for s in next(iter(first.values())).values() if isinstance(s, dict) and "runs" in s)
    return [
        (
            f"**Cold start** — median of {n} fresh processes (`python -m diffcls_fast.cli`, the package not installed),"
            f" {data['device']}, {data['date']} ([json](../bench/results/{json_name})):"
        ),
        "",
        "| tree | torch threads | command | wall s | user+sys s |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *ratios,
        *([""] if ratios else []),
    ]
