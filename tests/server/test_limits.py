"""A server with tight limits: 413 (body, pixels, images, classes, prompts), 429 (queue full), 504 (deadline, work
dropped)."""

import base64
import concurrent.futures
import io
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from diffcls_fast.client import Client, ServerError  # noqa: E402
from diffcls_fast.server.app import ServerThread  # noqa: E402
from diffcls_fast.server.limits import Limits, parse_params  # noqa: E402
from diffcls_fast.server.metrics import parse  # noqa: E402

from .helpers import digit_pngs, make_classifier  # noqa: E402

LIMITS = Limits(
    max_body_bytes=48_000,
    max_image_pixels=32 * 32,
    max_images=3,
    max_classes=12,
    max_prompts=20,
    max_queue=2,
    default_timeout=60.0,
    max_timeout=120.0,
)
HEAVY = {
    "policy": "exhaustive",
    "n_grid": 60,
}  # 600 evaluations per digit: most of a second of work on the CPU, or more


@pytest.fixture(scope="module")
def server():
    with ServerThread(lambda: make_classifier("halving"), limits=LIMITS, warmup=False) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url) as c:
        yield c


def post(server, body):
    return httpx.post(f"{server.url}/v1/classify", json=body, timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(w: int, h: int, noise: bool = False) -> bytes:
    im = Image.effect_noise((w, h), 80) if noise else Image.new("L", (w, h), 0)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_body_over_the_limit_is_413(server):
    r = post(server, {"images": [b64(png(120, 120, noise=True))] * 3})
    assert r.status_code == 413 and r.json()["kind"] == "too_large" and "48000" in r.json()["error"]
    # also without a Content-Length header (a chunked upload), counted while reading
    r = httpx.post(
        f"{server.url}/v1/classify",
        content=iter([b"{" + b" " * 30_000] * 2),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body, message",
    [
        ({"images": [b64(png(40, 40))]}, "40x40 = 1600 pixels; the limit is 1024"),
        ({"images": [b64(png(8, 8))] * 4}, "4 images in one request; the limit is 3"),
        (
            {"images": [b64(png(8, 8))], "classes": [f"c{k}" for k in range(13)]},
            "13 classes in one request; the limit is 12",
        ),
        ({"images": [b64(png(8, 8))], "timeout": 500}, "over this server's limit of 120 s"),
        # 7 classes (under the class limit) of 3 prompts each: 21 denoiser rows per sample
        (
            {
                "images": [b64(png(8, 8))],
                "prompts": [{"class": f"c{k}", "prompt": f"p{k} {j}"} for k in range(7) for j in range(3)],
            },
            "21 prompts in one request",
        ),
    ],
)
def test_limits_are_413_with_one_line(server, body, message):
    r = post(server, body)
    assert r.status_code == 413 and r.json()["kind"] == "too_large"
    assert message in r.json()["error"] and "\n" not in r.json()["error"]


@pytest.mark.parametrize("n", [4, 5, 40])
def test_too_many_multipart_files_is_413_however_many(server, n):
    # the multipart parser stops at max_images + 1 files; past that it must still be a 413, not a 400
    files = [("images", (f"{k}.png", png(8, 8), "image/png")) for k in range(n)]
    r = httpx.post(f"{server.url}/v1/classify", files=files, timeout=120)
    assert r.status_code == 413 and r.json()["kind"] == "too_large", r.json()
    assert "the limit is 3" in r.json()["error"] and "\n" not in r.json()["error"]


def test_a_declared_gigapixel_png_is_refused_before_decoding():
    # a tiny PNG whose header claims 100,000 x 100,000 pixels: refused from the header alone
    import zlib

    from diffcls_fast.server.limits import decode_image

    data = png(8, 8)
    ihdr = b"IHDR" + (100_000).to_bytes(4, "big") * 2 + data[24:29]
    big = data[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + data[33:]
    with pytest.raises(Exception) as e:
        decode_image("big.png", big, LIMITS, (8, 8), 1)
    assert getattr(e.value, "status", None) == 413 and "10000000000 pixels" in str(e.value)


def test_full_queue_is_429_with_retry_after(server):
    pngs, _, _ = digit_pngs(1)
    barrier = threading.Barrier(6)

    def one(_):
        with Client(server.url) as c:
            barrier.wait()
            try:
                c.classify(
                    pngs, timeout=120, **HEAVY
                )  # the longest deadline: a slow, shared CPU must not turn this into a 504
                return 200, None
            except ServerError as e:
                return e.status, e.retry_after

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(one, range(6)))
    codes = sorted(c for c, _ in answers)
    assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
    assert all(ra is not None and ra >= 1 for c, ra in answers if c == 429)


def test_deadline_is_504_and_its_work_is_dropped(server, client):
    pngs, _, _ = digit_pngs(3)
    before = parse(client.metrics())["diffcls_evaluations_total"]
    t0 = time.monotonic()
    with pytest.raises(ServerError) as e:
        client.classify(pngs, timeout=0.5, **HEAVY)  # 1,800 evaluations: far over half a second
    assert e.value.status == 504 and e.value.kind == "deadline"
    assert time.monotonic() - t0 < 30  # answered at the deadline, not after the work
    time.sleep(0.3)
    m1 = parse(client.metrics())
    assert m1["diffcls_inflight_images"] == 0 and m1["diffcls_waiting_images"] == 0 and m1["diffcls_queue_depth"] == 0
    time.sleep(1.0)
    m2 = parse(client.metrics())
    assert m2["diffcls_evaluations_total"] == m1["diffcls_evaluations_total"]  # nothing more was run for it
    assert m1["diffcls_evaluations_total"] - before < 1800
    assert m2['diffcls_errors_total{kind="deadline"}'] >= 1
    assert client.classify(pngs[:1], ["one", "seven"])[0]["label"] in ("one", "seven")  # and the loop goes on


def test_parse_params_checks_types_without_a_server():
    ok = parse_params(
        {
            "images": [b64(b"x")],
            "seed": 3,
            "policy": "halving",
            "options": {"rounds": [1, 2], "t_band": [0.1, 0.5]},
            "top_k": 2,
        },
        [],
        Limits(),
    )
    assert ok.options == {"seed": 3, "policy": "halving", "rounds": [1, 2], "t_band": [0.1, 0.5]} and ok.top_k == 2
    for bad in (
        {"seed": True},
        {"top_k": 0},
        {"options": {"rounds": [1.5]}},
        {"options": {"cutoff_pval": "x"}},
        {"options": {"tuned": "/etc/passwd"}},  # a path on the server's disk is the server's setting
        {"classes": 3},
        {"names": ["a", "b"]},
    ):
        with pytest.raises(Exception) as e:
            parse_params({"images": [b64(b"x")], **bad}, [], Limits())
        assert getattr(e.value, "status", None) == 400, bad


def test_a_client_that_goes_away_has_its_work_dropped(server, client):
    pngs, _, _ = digit_pngs(3)
    before = parse(client.metrics())["diffcls_evaluations_total"]
    body = {"images": [b64(p) for p in pngs], "policy": "exhaustive", "options": {"n_grid": 60}, "timeout": 120}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/classify", json=body, timeout=httpx.Timeout(60, read=0.5))
    t0 = time.monotonic()
    while parse(client.metrics())["diffcls_queue_depth"] > 0 and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    m1 = parse(client.metrics())
    assert m1["diffcls_queue_depth"] == 0 and m1["diffcls_inflight_images"] == 0
    time.sleep(0.8)
    assert parse(client.metrics())["diffcls_evaluations_total"] == m1["diffcls_evaluations_total"] < before + 1800
