"""Download the wheels the GPU machine (H100 or H200) lacks into .whl/ (git-ignored), in the 64 MiB that travel.

    python scripts/fetch_gpu_wheels.py            # download, check, write .whl/manifest.json
    python scripts/fetch_gpu_wheels.py --check    # only re-check what is in .whl/ against the budget

The device tool copies the working tree (tracked + untracked-not-ignored files) and
the carried paths, 64 MiB in all; nothing there can reach a registry. Its python3 is
3.12 with torch 2.11, triton, transformers, tokenizers, safetensors and
huggingface_hub, but no diffusers or xformers (the device tool's KINDS.md,
package list of 2026-11-17). So we carry:

* diffusers, the version CI uses here (the image's huggingface_hub 1.33 and
  safetensors 0.8 satisfy its pins);
* xformers 0.0.35 (3 MB), the newest release; it needs torch >= 2.10, but its _C.so was built
  for torch 2.10.0+cu128 and the image has 2.11.0+cu130, so its kernels may fail to load there.

Not carried, and why (bench.gpu reports these as "not run" with the reason):
onnxruntime-gpu (its wheel alone is over the budget; the size is looked up) and
TensorRT (PyPI's ``tensorrt`` is a stub that fetches the real wheels from NVIDIA's
index at install time). Refuses, exit code 2, if repo + wheels + margin exceed 64 MiB.
The install command on the device is in ``bench/gpu.py``'s docstring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".whl"
BUDGET = 64 << 20
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    a for p in PLATFORMS for a in ("--platform", p)
]

WHEELS = [
    ("diffusers", "0.42.1", "not on the device image; the version CI runs here"),
    (
        "xformers",
        "0.0.35",
        (
            "not on the device image; needs torch>=2.10, but its _C.so is built for torch 2.10.0+cu128 and the image"
            " has 2.11.0+cu130, so its kernels may not load (bench.gpu records what happens)"
        ),
    ),
]
# Python packages on the device image (KINDS.md, read 2026-11-17), normalised names.
DEVICE_HAS = set(
    """accelerate attrs certifi charset-normalizer filelock fsspec hf-xet huggingface-hub idna jinja2 markupsafe
    numpy onnx onnxruntime packaging pillow protobuf psutil pyyaml regex requests safetensors scipy scikit-learn
    sentencepiece setuptools tokenizers torch tqdm transformers triton typing-extensions urllib3 zipp matplotlib
    pytest""".split()
)
# Requirements a carried wheel declares that the device does not need, with the reason.
NOT_NEEDED = {
    "importlib-metadata": "diffusers imports importlib.metadata on Python >= 3.8 (diffusers/utils/import_utils.py)"
}
TENSORRT_WHY = (
    "PyPI's tensorrt is a stub that downloads the real wheels from pypi.nvidia.com at install time; the device reaches"
    " no index"
)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def travelling_bytes() -> int:
    """Bytes of what the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    total = 0
    for args in (["git", "ls-files", "-z"], ["git", "ls-files", "-z", "--others", "--exclude-standard"]):
        out = subprocess.run(args, cwd=ROOT, capture_output=True, check=True).stdout.decode()
        for rel in filter(None, out.split("\0")):
            p = ROOT / rel
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def requirements(whl: Path) -> list[str]:
    """Runtime requirement names of a wheel for Python 3.12 (extras and non-matching markers dropped)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(
                {"python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
            ):
                names.append(_norm(req.name))
    return names


def wheel_url(name: str, version: str | None) -> str | None:
    """The URL pip would download for the device's platform (a dry-run report; nothing is downloaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        spec = f"{name}=={version}" if version else name
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "-q",
            "--target",
            str(Path(tmp) / "t"),
            "--report",
            str(report),
            *TARGET,
            spec,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0 or not report.exists():
            return None
        items = json.loads(report.read_text())["install"]
        return items[0]["download_info"]["url"] if items else None


def remote_size(url: str) -> int | None:
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=60) as r:
        n = r.headers.get("Content-Length")
    return int(n) if n else None


def download(name: str, version: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(DEST), *TARGET, f"{name}=={version}"]
    subprocess.run(cmd, check=True, timeout=600)
    found = [
        p for p in DEST.glob("*.whl") if _norm(p.name.split("-")[0]) == _norm(name) and p.name.split("-")[1] == version
    ]
    if len(found) != 1:
        raise SystemExit(
            f"fetch_gpu_wheels: expected one {name}-{version} wheel in {DEST}, found {[p.name for p in found]}"
        )
    return found[0]


def not_carried() -> dict[str, str]:
    why = {"tensorrt": TENSORRT_WHY}
    url = wheel_url("onnxruntime-gpu", None)
    size = remote_size(url) if url else None
    if size:
        why["onnxruntime-gpu"] = f"{Path(url).name} is {size / 2**20:.0f} MiB, over the 64 MiB that travel in all"
    else:
        why["onnxruntime-gpu"] = (
            "no wheel size found for onnxruntime-gpu (recent releases are over 200 MiB, beyond the 64 MiB that travel)"
        )
    return why


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not download; check .whl/ against the budget")
    ap.add_argument(
        "--margin-mib",
        type=float,
        default=2.0,
        help="room left for results and edits made before the device call (default 2)",
    )
    a = ap.parse_args(argv)
    DEST.mkdir(exist_ok=True)
    wanted = {_norm(n): v for n, v, _ in WHEELS}
    for p in DEST.glob("*.whl"):  # two versions of one package stop the install on the device
        if wanted.get(_norm(p.name.split("-")[0])) != p.name.split("-")[1]:
            print(f"removing stale {p.name}")
            p.unlink()
    files = []
    for name, version, why in WHEELS:
        have = [p for p in DEST.glob("*.whl") if _norm(p.name.split("-")[0]) == _norm(name)]
        whl = have[0] if have else (None if a.check else download(name, version))
        if whl is None:
            raise SystemExit(f"fetch_gpu_wheels: {name}=={version} is not in {DEST}; run without --check")
        files.append({"file": whl.name, "bytes": whl.stat().st_size, "why": why})
        missing = [r for r in requirements(whl) if r not in DEVICE_HAS and r not in wanted]
        for r in missing:
            if r in NOT_NEEDED:
                print(f"{name} requires {r}: not carried, {NOT_NEEDED[r]}")
            else:
                raise SystemExit(
                    f"fetch_gpu_wheels: {name} requires {r}, which the device image lacks; add it to WHEELS"
                )
    repo = travelling_bytes()
    wheels = sum(f["bytes"] for f in files)
    margin = int(a.margin_mib * 2**20)
    for f in files:
        print(f"{f['file']:70s} {f['bytes'] / 2**20:7.2f} MiB  ({f['why']})")
    print(
        f"wheels {wheels / 2**20:.2f} MiB + working tree {repo / 2**20:.2f} MiB + margin {margin / 2**20:.1f} MiB ="
        f" {(wheels + repo + margin) / 2**20:.2f} MiB of {BUDGET >> 20} MiB"
    )
    if wheels + repo + margin > BUDGET:
        print(
            f"fetch_gpu_wheels: error: over the {BUDGET >> 20} MiB the device tool carries; drop a wheel or shrink the"
            " tree",
            file=sys.stderr,
        )
        return 2
    manifest = {
        "date": datetime.date.today().isoformat(),
        "device_python": "3.12",
        "wheels": files,
        "wheels_bytes": wheels,
        "tree_bytes": repo,
        "budget_bytes": BUDGET,
        "not_carried": {} if a.check else not_carried(),
    }
    old = DEST / "manifest.json"
    if a.check and old.exists():
        manifest["not_carried"] = json.loads(old.read_text()).get("not_carried", {})
    old.write_text(json.dumps(manifest, indent=1) + "\n")
    for k, v in manifest["not_carried"].items():
        print(f"not carried: {k}: {v}")
    print(f"wrote {old}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
