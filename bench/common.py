"""Shared helpers for the benchmarks: environment capture and result files."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: str | torch.device | None = None) -> str:
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def device_tag(device: str | torch.device | None = None) -> str:
    name = device_name(device).lower()
    if "h100" in name:
        return "h100"
    if "h200" in name:
        return "h200"
    if "cuda" in str(device) or (device is None and torch.cuda.is_available()):
        return "gpu"
    return "cpu"


def environment(device: str | torch.device | None = None) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import diffusers
    import transformers

    return {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "commit": commit or "unknown",
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(payload, indent=2) + "\n")
    return p


def weights_of(model) -> dict:
    """Which weights a result measured: the model's fingerprint, and for a bundled model the training steps its
    ``diffcls.json`` records, so a report can tell a front of an earlier checkpoint from one of the shipped weights."""
    steps = trained_steps(model.name)
    return {"fingerprint": model.fingerprint} | ({} if steps is None else {"training_steps": steps})


def other_weights(recorded: dict | None, current: dict) -> str | None:
    """Why a result that recorded ``recorded`` (a :func:`weights_of` dict; None for an older file) measured other
    weights than ``current``, in words, or None (the same weights, or nothing recorded to tell). The fingerprints
    decide where both have one; else the training steps (a front annotated afterwards with its step only)."""
    if not recorded:
        return None
    had, now = recorded.get("fingerprint"), current.get("fingerprint")
    if had is not None and now is not None:
        return None if had == now else f"fingerprint {had}, this model is {now}"
    had, now = recorded.get("training_steps"), current.get("training_steps")
    if had is not None and now is not None and had != now:
        return f"training step {had:,}, this model is step {now:,}"
    return None


def trained_steps(name: str) -> int | None:
    """The training steps of a bundled model's shipped weights (``unet_steps`` for a latent model), or None."""
    from diffcls_fast.models.bundled import BUNDLED

    meta = BUNDLED.get(name, Path("/nonexistent")) / "diffcls.json"
    if not meta.is_file():
        return None
    training = json.loads(meta.read_text()).get("training", {})
    steps = training.get("unet_steps", training.get("steps"))
    return int(steps) if steps is not None else None
