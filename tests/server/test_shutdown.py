"""``diffcls-fast serve`` as a real process: it binds loopback, answers, and on SIGTERM finishes the requests in
flight."""

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from diffcls_fast.client import Client  # noqa: E402
from diffcls_fast.server.metrics import parse  # noqa: E402

from .helpers import digit_pngs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffcls_fast.cli", "serve", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()
    m = re.search(r"serving on (http://\S+) ", line)
    if m is None:
        proc.kill()
        raise AssertionError(f"no address in {line!r}: {proc.stderr.read()}")
    url = m.group(1)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not become ready")


def test_sigterm_finishes_the_requests_in_flight_then_exits():
    proc, url = start_server("--policy", "exhaustive", "--n-grid", "30", "--batch-size", "64", "--no-warmup")
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        pngs, labels, _ = digit_pngs(4)

        def one(i):
            with Client(url) as c:
                return c.classify([pngs[i]])[0]

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futures = [ex.submit(one, i) for i in range(4)]
            with Client(url) as c:  # wait until the server holds them
                t0 = time.monotonic()
                while parse(c.metrics())["diffcls_queue_depth"] < 4 and time.monotonic() - t0 < 60:
                    time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=300) for f in futures]
        assert [r["label_index"] for r in results] == labels  # every request in flight was answered
        assert all(r["evaluations"] == 300 for r in results)
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert "server stopped (requests in flight answered)" in proc.stderr.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_graceful_timeout_answers_json_503_and_says_so():
    """Past --graceful-timeout uvicorn cancels the handlers still running: the client gets the usual
    one JSON line (503 shutting_down), not a bare 500, and the stop message says requests were cut."""
    proc, url = start_server(
        "--policy", "exhaustive", "--n-grid", "400", "--batch-size", "64", "--no-warmup", "--graceful-timeout", "1"
    )
    try:
        pngs, _, _ = digit_pngs(1)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(
                lambda: httpx.post(
                    f"{url}/v1/classify", files=[("images", ("a.png", pngs[0], "image/png"))], timeout=120
                )
            )
            with Client(url) as c:
                t0 = time.monotonic()
                while parse(c.metrics())["diffcls_queue_depth"] < 1 and time.monotonic() - t0 < 60:
                    time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            r = fut.result(timeout=120)
        assert (
            r.status_code == 503 and r.json()["kind"] == "shutting_down" and "graceful-timeout" in r.json()["error"]
        ), r.text
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
        err = proc.stderr.read()
        assert "server stopped (1 request(s) cut short by --graceful-timeout, answered 503)" in err, err
        assert "Traceback" not in err and "never retrieved" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_checks_its_options_before_loading_the_model():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, msg in (
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--request-timeout", "900"], "over --max-timeout"),
        (["--policy", "halving", "--rounds", "4", "2"], "rounds"),
        (["--device", "tpu"], "device"),
        (["--model", "/nonexistent/model"], "no such folder"),
        (["--model", ""], "--model is empty"),
        (["--model", str(ROOT / "docs")], "not a diffusion model folder"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "diffcls_fast.cli", "serve", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 2 and p.stderr.startswith("diffcls-fast: error:") and msg in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_a_model_that_fails_to_load_stops_the_server_with_exit_2(tmp_path):
    """A folder with the right layout whose weights are broken passes the checks before the port is bound; the load
    then fails in the engine loop, and the server exits at once (it used to answer 503 "failed" forever)."""
    import shutil

    from diffcls_fast.models.bundled import BUNDLED

    folder = tmp_path / "broken"
    shutil.copytree(BUNDLED["digits"], folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    p = subprocess.run(
        [sys.executable, "-m", "diffcls_fast.cli", "serve", "--port", "0", "--model", str(folder)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert "serving on" in lines[0] and lines[1].startswith("diffcls-fast: error: the model failed to load"), lines
    assert "cannot load the denoiser" in lines[1] and len(lines) == 2, lines


def test_a_client_that_sends_part_of_its_body_then_closes_is_a_dropped_client_not_a_bug():
    """Content-Length 1000, 9 bytes, close: no ClientDisconnect traceback in the log, and /metrics counts a dropped
    client (499 client_closed), not a 500 internal error."""
    import socket
    from urllib.parse import urlsplit

    proc, url = start_server("--no-warmup")
    try:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port)) as s:
            s.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"images\""
            )
            time.sleep(0.5)
        with Client(url) as c:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                m = c.metrics()
                if 'kind="client_closed"' in m:
                    break
                time.sleep(0.2)
        assert 'kind="client_closed"' in m and 'kind="internal"' not in m, m
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    err = proc.stderr.read()
    assert "Traceback" not in err and "ClientDisconnect" not in err, err
