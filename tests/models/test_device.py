"""--device / resolve_device: one clear UserError for a device this machine cannot use."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffcls_fast import UserError
from diffcls_fast.models.common import resolve_device

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_gpu(monkeypatch):
    """Pretend to be a CUDA build with one visible GPU."""
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def cpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("dev", ["cpu", "CPU", " cpu ", "cpu:0", torch.device("cpu")])
def test_cpu_spellings(dev):
    assert resolve_device(dev) == torch.device("cpu")


NOT_DEVICES = [
    ("bogus", "not a device (expected cpu, cuda, cuda:N, mps)"),
    ("cuda:x", "not a device"),
    ("cuda:-1", "not a device"),
    ("", "not a device"),
    ("meta", "not supported"),
    ("xpu", "not supported"),
]


@pytest.mark.parametrize("dev, fragment", NOT_DEVICES)
def test_not_a_device(dev, fragment):
    with pytest.raises(UserError) as e:
        resolve_device(dev)
    assert fragment in str(e.value)


@pytest.mark.parametrize("dev", ["cuda", "cuda:0", "cuda:7", torch.device("cuda")])
def test_cuda_on_a_cpu_build(cpu_build, dev):
    with pytest.raises(UserError, match=r"this torch build has no CUDA \(torch "):
        resolve_device(dev)


def test_cuda_build_without_a_usable_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is usable"):
        resolve_device("cuda")


def test_cuda_index_out_of_range(one_gpu):
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match=r"'cuda:7': only 1 CUDA device\(s\)"):
        resolve_device("cuda:7")


def test_mps_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("dev, fragment", [("bogus", "not a device"), ("cuda:7", "cuda:7")])
def test_cli_device_is_one_line_before_the_model(dev, fragment):
    # a missing model folder would be reported by the load: the device error comes first
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffcls_fast.cli",
            "classify",
            str(ROOT / "examples" / "digit-0.png"),
            "--model",
            "/no/such/model",
            "--device",
            dev,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    err = proc.stderr.strip()
    if dev == "cuda:7" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8+ GPUs")
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("diffcls-fast: error: device ") and fragment in err, err
