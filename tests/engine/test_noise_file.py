"""--noise-path: every way the file can be wrong is one UserError, reported before the model loads."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffcls_fast import UserError
from diffcls_fast.engine.noise import load_noise_file

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, case):
    p = tmp_path / "noise.safetensors"
    if case == "not_safetensors":
        p.write_text("hello, I am text\n")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        save_file({"noise": torch.randn(4, 1, 8, 8)}, str(p))
        p.write_bytes(p.read_bytes()[:-10])
    elif case == "no_noise_key":
        save_file({"eps": torch.randn(4, 1, 8, 8)}, str(p))
    elif case == "wrong_ndim":
        save_file({"noise": torch.randn(4, 64)}, str(p))
    elif case == "zero_rows":
        save_file({"noise": torch.zeros(0, 1, 8, 8)}, str(p))
    elif case == "int_dtype":
        save_file({"noise": torch.zeros(4, 1, 8, 8, dtype=torch.int64)}, str(p))
    elif case == "nan":
        save_file({"noise": torch.full((4, 1, 8, 8), float("nan"))}, str(p))
    elif case == "directory":
        p.mkdir()
    elif case == "missing":
        pass
    return p


CASES = {
    "not_safetensors": "not a safetensors file",
    "empty": "not a safetensors file",
    "truncated": "not a safetensors file",
    "no_noise_key": "no tensor named 'noise' (found eps)",
    "wrong_ndim": "expected [N, C, H, W]",
    "zero_rows": "expected [N, C, H, W] with N >= 1",
    "int_dtype": "dtype int64; expected a float tensor",
    "nan": "NaN or infinite",
    "directory": "not a file",
    "missing": "no such noise file",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_noise_file(tmp_path, case):
    p = _write(tmp_path, case)
    with pytest.raises(UserError) as e:
        load_noise_file(p)
    assert CASES[case] in str(e.value) and "\n" not in str(e.value)


def test_good_noise_file_and_its_content_hash(tmp_path):
    p = tmp_path / "n.safetensors"
    x = torch.randn(6, 1, 8, 8, dtype=torch.float16)
    save_file({"noise": x}, str(p))
    noise, sha = load_noise_file(p)
    assert noise.dtype == torch.float32 and noise.shape == (6, 1, 8, 8)
    torch.testing.assert_close(noise, x.float(), rtol=0, atol=0)
    q = tmp_path / "same_path_other_content.safetensors"
    save_file({"noise": x + 1}, str(q))
    assert load_noise_file(q)[1] != sha


@pytest.mark.parametrize("case", ["not_safetensors", "no_noise_key", "int_dtype"])
def test_cli_reports_bad_noise_before_loading_the_model(tmp_path, case):
    p = _write(tmp_path, case)
    # /no/such/model would fail the load; the noise error must come first
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffcls_fast.cli",
            "classify",
            str(ROOT / "examples" / "digit-0.png"),
            "--model",
            "/no/such/model",
            "--noise-path",
            str(p),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert CASES[case] in err, err
