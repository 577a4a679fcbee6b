"""GPU truth (issue 11): one command that verifies every CUDA path and measures the engine.

    python -m bench.gpu [--quick] [--out DIR] [--budget SECONDS] [--sections a,b,...]

On the H200 of the device tool, as ONE call (prepare the wheels here first with
``python scripts/fetch_gpu_wheels.py``; it fills ``.whl/``, git-ignored, and checks the
64 MiB that may travel)::

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl "
                "&& export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 -m bench.gpu --out $OUT",
        carry=[".whl"], timeout_s=560)

(``--quick`` in place of the full run if under ~5 minutes of device time are left; then
``timeout_s=240``.) Then copy ``gpu_<device>_<date>.json`` and ``.png`` from the returned
files into ``bench/results/`` and run ``python -m bench.report``.

Sections, in order, each in its own child process with a hard time budget (the
child checks its deadline between measurements and records what it has; the
parent kills it at the budget and moves on, so no part can eat the call). Every
measurement is appended to ``<base>_records.jsonl`` and the result file is
rewritten after each section, so a kill still leaves results. Budgets in seconds,
full / ``--quick`` (the whole suite also stops at ``--budget``, default 510 / 190):

=========  ====  =====  ===============================================================
section    full  quick  what
=========  ====  =====  ===============================================================
kernels     45    25    ceilings: 1 GiB device-to-device copy (GB/s, read + written),
                        8192^3 bf16 and fp16 matmul (3 warm-ups, median of 10, random
                        data); 1b: make_noisy / query_errors GB/s, fused Triton vs the
                        torch reference, SD latents (4x64x64, Q 64/128/256/1024) and
                        digits (1x8x8), fp16 + bf16, as a fraction of the copy
tests      150    70    1a: ``pytest -m cuda tests`` (``-m "cuda and not slow"`` quick):
                        Triton kernels compiled for the GPU vs the reference, engine on
                        CUDA vs CPU on the digits held-out set, compile backend vs
                        eager, xformers vs SDPA; junit XML + streamed outcomes
denoisers   90    35    1c: preset:sd2-base, sd15, dit-xl-2-256 (random weights), eager
                        SDPA fp16 + bf16 and xformers fp16, batch 8/32/64/128/256 (quick:
                        sd2-base fp16, batch 8/64/256): ms/call, evaluations/s, FLOPs
                        (FlopCounterMode on the meta device), MFU vs the measured bf16
                        matmul and vs the datasheet; 1b: one engine step (make_noisy +
                        denoiser + query_errors) fused vs reference at batch 64/256
engine      75    35    1d: engine vs bench/reference_loop.py on preset:sd2-base fp16, Li's
                        CIFAR-10 schedule (10 classes, 50 500 / 5 1 = 2,750 evals), same
                        noise, 2 images (quick 1), no speculation (equal work); bare
                        denoiser at batch 256 (overhead); 1e: seconds/image, CIFAR-10
                        measured, ImageNet (1,000 classes, 124,500 evals) extrapolated
                        from a measured 4,000-evaluation slice (quick 1,000)
compile    110     -    1c: torch.compile of sd2-base fp16: the engine's backend
                        (reduce-overhead, CUDA graphs) and mode="default" (no graphs),
                        batch 64 first, then 256 if the budget allows; compile seconds
                        reported apart; output checked against eager
profile     30    20    3: torch.profiler top kernels of whatever missed its target
                        (denoiser batch 64, one engine classify, the fused kernels)
=========  ====  =====  ===============================================================

Expected costs behind those numbers (estimates, not measurements): sd2-base is 804
GFLOP per row (counted), so batch 256 is ~206 TFLOP, ~0.4-0.5 s per call at 50% of
the ~790 TFLOP/s bf16 rate seen on this H200 (KINDS.md); one CIFAR-10 image (2,750
rows) ~4-6 s per system; instantiating 866M random weights on the GPU ~2-5 s;
compiling the SD UNet ~1-2 min per mode and shape. Child start (imports, CUDA
context) ~5-8 s is inside each budget. With ``--budget 510`` the call needs about
520-530 s plus the pip install.

Files in ``--out`` (at most 7, the device tool brings back 8): ``<base>.json``
(the results; ``bench/gpu_schema.py`` defines it), ``<base>.png`` (evals/s and MFU vs
batch), ``<base>.log`` (everything printed), ``<base>_records.jsonl`` (raw records),
``<base>_pytest.xml`` (junit), ``<base>_profile.txt`` (top-kernel tables), where
``<base>`` is ``gpu_<device>_<date>``. ONNX Runtime CUDA and TensorRT are recorded as
not run, with the reason (they cannot be installed on the device). Without CUDA the
suite runs its CPU-sized parts (ceilings, FLOP counts, the digits model) and records
the CUDA-only parts as "skipped: no CUDA device"; ``--quick`` then takes ~1-2 min
(``--budget-scale 3`` gives a slow, shared CPU room; tests/test_bench_gpu.py runs it so).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from .gpu_schema import Recorder, finalize, missed_targets, plot, read_records, summary_lines, write_payload

ROOT = Path(__file__).resolve().parent.parent
# (name, full budget s, quick budget s; 0 = not in --quick)
PLAN = [("kernels", 45, 25), ("tests", 150, 70), ("denoisers", 90, 35), ("engine", 75, 35), ("compile", 110, 0), ("profile", 30, 20)]
DEFAULT_BUDGET = {False: 510, True: 190}
MIN_SECTION_S = 8  # a section given less than this is skipped: child start-up alone takes ~5 s


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_meta(quick: bool, budget: float) -> dict:
    import torch

    from .common import device_name, device_tag

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(dev),
        "device_tag": device_tag(dev),
        "cuda_available": cuda,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": commit,
        "quick": quick,
        "budget_s": budget,
        "packages": {d: _version(d) for d in ("triton", "diffusers", "transformers", "xformers", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")},
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        meta["gpu"] = {"multiprocessors": props.multi_processor_count, "memory_GiB": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"}
        try:
            q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            meta["gpu"]["nvidia_smi"] = dict(zip(q.split(","), (v.strip() for v in smi.stdout.strip().split(","))))
        except (OSError, subprocess.SubprocessError) as e:
            meta["gpu"]["nvidia_smi"] = f"unavailable ({e})"
    return meta


def _manifest() -> dict:
    p = ROOT / ".whl" / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def record_not_run(rec: Recorder) -> None:
    """Backends this suite cannot run on the device, each with its reason (never skipped silently)."""
    why = _manifest().get("not_carried", {})
    try:
        import onnxruntime as ort

        prov = ort.get_available_providers()
        if "CUDAExecutionProvider" in prov:
            rec.not_run("ONNX Runtime CUDA", f"onnxruntime {ort.__version__} has the CUDA provider here, but it is not in this suite's 9-minute plan")
        else:
            size = why.get("onnxruntime-gpu", "onnxruntime-gpu is too large to carry in 64 MiB")
            rec.not_run("ONNX Runtime CUDA", f"not installable on the device: onnxruntime {ort.__version__} here has only {prov}; {size}")
    except ImportError as e:
        rec.not_run("ONNX Runtime CUDA", f"onnxruntime does not import ({e})")
    if importlib.util.find_spec("tensorrt") is None:
        rec.not_run("TensorRT", f"not installable on the device: {why.get('tensorrt', 'no tensorrt wheel can be carried (PyPI has a stub that fetches from NVIDIA index)')}")
    else:
        rec.not_run("TensorRT", f"tensorrt {_version('tensorrt')} is importable, but its backend is not in this suite's plan (tests/export/test_tensorrt.py runs it)")
    if importlib.util.find_spec("xformers") is None:
        rec.not_run("xformers", f"not installed here; {why.get('xformers', 'carry its wheel with scripts/fetch_gpu_wheels.py')}")


class Runner:
    """Runs the sections; tees every line to stdout and the log."""

    def __init__(self, out: Path, base: str, quick: bool, budget: float, scale: float = 1.0):
        self.out, self.quick, self.budget, self.scale = out, quick, budget, scale
        names = {"json": ".json", "png": ".png", "log": ".log", "records": "_records.jsonl", "xml": "_pytest.xml", "profile": "_profile.txt"}
        self.paths = {k: out / f"{base}{suffix}" for k, suffix in names.items()}
        for k in ("records", "profile", "xml"):
            self.paths[k].unlink(missing_ok=True)
        self.log = open(self.paths["log"], "w")
        self.sections: dict[str, dict] = {}
        self.meta: dict = {}
        self.t_end = time.time() + budget
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.log.write(line + "\n")
            self.log.flush()

    def payload(self) -> dict:
        return finalize(read_records(self.paths["records"]), self.meta, self.sections)

    def write(self) -> dict:
        p = self.payload()
        write_payload(self.paths["json"], p)
        return p

    def stream(self, name: str, cmd: list[str], budget: float, sink=None) -> tuple[int | None, bool, float]:
        """Run ``cmd`` in its own process group; kill the group at ``budget`` seconds. (rc, timed_out, seconds)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)

        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                self.say(f"[{name}] {line}")
                if sink is not None:
                    sink(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.say(f"[{name}] budget of {budget:.0f} s reached: stopping it")
            os.killpg(proc.pid, signal.SIGTERM)  # the group this Popen created (the child and its workers)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=10)
        return proc.returncode, timed_out, time.time() - t0

    def child(self, name: str, budget: float, missed: list[str]) -> str:
        cmd = [sys.executable, "-m", "bench.gpu", "--child", name, "--records", str(self.paths["records"]), "--deadline", f"{time.time() + budget - 4:.3f}"]
        cmd += ["--out", str(self.out), "--profile-path", str(self.paths["profile"]), "--missed", ",".join(missed)] + (["--quick"] if self.quick else [])
        rc, timed_out, _ = self.stream(name, cmd, budget)
        st = [r for r in read_records(self.paths["records"]) if r["kind"] == "status" and r["section"] == name]
        if timed_out:
            return f"partial: killed at its budget of {budget:.0f} s" + (f" ({st[-1]['status']})" if st else "")
        if st:
            return st[-1]["status"]
        return f"failed: exit code {rc}, no status recorded"

    def tests(self, budget: float) -> str:
        marker = "cuda and not slow" if self.quick else "cuda"
        cmd = [sys.executable, "-m", "pytest", "-m", marker, "-v", "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={self.paths['xml']}", "tests"]
        lines: list[str] = []
        rc, timed_out, secs = self.stream("tests", cmd, budget, sink=lines.append)
        res = parse_pytest(lines)
        rec = Recorder(self.paths["records"], "tests")
        rec.tests(marker=marker, rc=rc, timed_out=timed_out, seconds=round(secs, 1), **res)
        if timed_out:
            return f"partial: killed at its budget of {budget:.0f} s after {sum(res['counts'].values())} test outcomes"
        if rc not in (0, 5):  # 5: no tests collected
            return f"failed: pytest exit code {rc}: {res['summary']}"
        return "ok"

    def run(self, selected: set[str] | None) -> dict:
        self.say(f"bench.gpu: {self.meta['device']}, torch {self.meta['torch']}, budget {self.budget:.0f} s, {'quick' if self.quick else 'full'}")
        env_rec = Recorder(self.paths["records"], "env")
        record_not_run(env_rec)
        self.write()  # a result file exists from the first second on
        for name, full, quick in PLAN:
            want = (quick if self.quick else full) * self.scale
            left = self.t_end - time.time() - 3
            if selected is not None and name not in selected:
                self.sections[name] = {"status": "skipped: not selected (--sections)", "budget_s": 0, "seconds": 0}
                continue
            if want == 0:
                self.sections[name] = {"status": "skipped: not in --quick", "budget_s": 0, "seconds": 0}
                continue
            budget = min(want, left)
            if budget < MIN_SECTION_S:
                self.sections[name] = {"status": f"skipped: {max(left, 0):.0f} s left of the suite's budget", "budget_s": 0, "seconds": 0}
                continue
            self.say(f"== section {name}: budget {budget:.0f} s")
            t0 = time.time()
            try:
                status = self.tests(budget) if name == "tests" else self.child(name, budget, missed_targets(self.payload()))
            except Exception:  # a bug in the orchestration of one section must not lose the others
                tb = traceback.format_exc()
                self.say(tb)
                Recorder(self.paths["records"], name).error(tb)
                status = "failed: " + tb.strip().splitlines()[-1]
            self.sections[name] = {"status": status, "budget_s": round(budget, 1), "seconds": round(time.time() - t0, 1)}
            self.say(f"== section {name}: {status} ({time.time() - t0:.0f} s)")
            self.write()
        p = self.write()
        try:
            plot(p, self.paths["png"])
        except Exception as e:  # the PNG is a convenience; the JSON is the result
            self.say(f"plot failed: {type(e).__name__}: {e}")
        for line in summary_lines(p):
            self.say(line)
        self.say(f"wrote {', '.join(str(v) for v in self.paths.values() if v.exists())}")
        self.log.close()
        return p


_OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
_SUMMARY = re.compile(r"^=+ (.+?) in [\d.]+s")
_SKIP = re.compile(r"^SKIPPED \[\d+\] (.*)$")


def parse_pytest(lines: list[str]) -> dict:
    """Outcome counts, failures and skip reasons from ``pytest -v -ra`` output, complete or cut off."""
    outcomes: dict[str, str] = {}
    summary, reasons = None, []
    for line in lines:
        m = _OUTCOME.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2)
            continue
        m = _SUMMARY.match(line)
        if m and ("passed" in m.group(1) or "failed" in m.group(1) or "skipped" in m.group(1) or "error" in m.group(1) or "deselected" in m.group(1) or "no tests" in m.group(1)):
            summary = m.group(1)
        m = _SKIP.match(line)
        if m and m.group(1) not in reasons:
            reasons.append(m.group(1))
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.lower()] = counts.get(o.lower(), 0) + 1
    failures = [n for n, o in outcomes.items() if o in ("FAILED", "ERROR")]
    return {"summary": summary or f"cut off after {len(outcomes)} outcomes: {counts}", "counts": counts, "failures": failures[:60], "skip_reasons": reasons[:12]}


def child_main(a) -> int:
    import torch

    from .gpu_sections import SECTIONS, Ctx

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rec = Recorder(a.records, a.child)
    ctx = Ctx(dev, a.quick, a.deadline, Path(a.out), Path(a.profile_path) if a.profile_path else None, [m for m in a.missed.split(",") if m])
    try:
        status = SECTIONS[a.child](rec, ctx)
    except Exception:  # recorded and reported: the parent marks the section failed and goes on
        tb = traceback.format_exc()
        print(tb, flush=True)
        rec.error(tb)
        rec.add("status", status="failed: " + tb.strip().splitlines()[-1])
        return 1
    rec.add("status", status=status)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the ~3-minute smoke plan")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the result files (default bench/results)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole suite (default 510, --quick 190)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (the CPU smoke test uses 3 on slow, shared machines)")
    ap.add_argument("--sections", default=None, help=f"comma-separated subset of {', '.join(n for n, _, _ in PLAN)}")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--records", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--missed", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child_main(a)
    selected = None
    if a.sections:
        selected = {s.strip() for s in a.sections.split(",") if s.strip()}
        unknown = selected - {n for n, _, _ in PLAN}
        if unknown:
            ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(n for n, _, _ in PLAN)}")
    if a.budget_scale <= 0:
        ap.error("--budget-scale must be > 0")
    budget = a.budget if a.budget is not None else DEFAULT_BUDGET[a.quick] * a.budget_scale
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(a.quick, budget)
    r = Runner(out, f"gpu_{meta['device_tag']}_{meta['date']}", a.quick, budget, a.budget_scale)
    r.meta = meta
    r.run(selected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
