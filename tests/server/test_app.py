"""A real server (loopback, ephemeral port, real HTTP): results equal to classify, concurrency, auth,
errors, metrics."""

import base64
import concurrent.futures
import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from diffcls_fast.cli import main  # noqa: E402
from diffcls_fast.client import Client, ServerError  # noqa: E402
from diffcls_fast.server.app import ServerThread  # noqa: E402
from diffcls_fast.server.metrics import parse  # noqa: E402

from .helpers import digit_pngs, make_classifier  # noqa: E402

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_classifier, api_key=KEY) as s:  # warm-up on: /healthz is ready only after it
        yield s


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, api_key=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def local():
    return make_classifier()


def same(remote: dict, local_result, top_k: int = 5):
    """A server result equals the local one: labels, counts and evaluations exactly, errors within tolerance."""
    exp = local_result.to_dict(top_k)
    for k in ("label", "label_index", "n_scores", "evaluations", "policy", "error"):
        assert remote[k] == exp[k], k
    assert [t["class"] for t in remote["top"]] == [t["class"] for t in exp["top"]]
    np.testing.assert_allclose([t["p"] for t in remote["top"]], [t["p"] for t in exp["top"]], atol=2e-6)
    names = list(exp["mean_errors"])
    a = np.array([remote["mean_errors"][n] if remote["mean_errors"][n] is not None else -1 for n in names])
    b = np.array([exp["mean_errors"][n] if exp["mean_errors"][n] is not None else -1 for n in names])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_healthz_models_and_auth(server, client):
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"  # open, for probes
    m = client.models()["models"][0]
    assert m["id"] == "digits" and m["classes"][7] == "seven" and m["policy"].startswith("halving")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/classify")):
            r = httpx.request(method, f"{server.url}{path}", headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["kind"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_classify_equals_local_classify_multipart_and_base64(server, client, local):
    pngs, _, pil = digit_pngs(3)
    exp = local.classify(pil)
    got = client.classify(pngs, names=["a.png", "b.png", "c.png"])
    assert [g["image"] for g in got] == ["a.png", "b.png", "c.png"]
    for g, e in zip(got, exp):
        same(g, e)
    body = {
        "images": [base64.b64encode(p).decode() for p in pngs],
        "seed": 4,
        "classes": "one, seven, three",
        "top_k": 2,
    }
    r = httpx.post(f"{server.url}/v1/classify", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    exp = local.with_options(seed=4).classify(pil, ["one", "seven", "three"])
    for g, e in zip(r.json()["results"], exp):
        same(g, e, top_k=2)
        assert len(g["top"]) == 2


def test_32_concurrent_requests_with_mixed_options_are_all_correct(server, local):
    pngs, labels, pil = digit_pngs(8)
    configs = [
        ({}, None),
        ({"seed": 1}, ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]),
        ({"policy": "exhaustive", "options": {"n_grid": 3}}, None),
        ({"seed": 2, "policy": "ttest", "options": {"min_scores": 4, "max_scores": 12}}, None),
    ]
    expected = {}
    for c, (opts, classes) in enumerate(configs):
        view = local.with_options(**{k: v for k, v in opts.items() if k != "options"}, **opts.get("options", {}))
        for i, r in enumerate(view.classify(pil, classes)):
            expected[c, i] = r

    def one(k):
        c, i = k % 4, k // 4
        opts, classes = configs[c]
        with Client(server.url, api_key=KEY) as cl:
            kw = {k2: v for k2, v in opts.items() if k2 != "options"} | opts.get("options", {})
            return c, i, cl.classify([pngs[i]], classes, **kw)[0]

    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(one, range(32)))
    for c, i, r in answers:
        same(r, expected[c, i])
    assert sum(r["label_index"] == labels[i] for _, i, r in answers) >= 30  # and they are right


def test_classify_cli_with_server_prints_the_local_output(server, capsys, monkeypatch):
    imgs = ["examples/digit-7.png", "examples/digit-3.png"]
    assert main(["classify", *imgs, "--policy", "halving", "--batch-size", "64", "--classes", "one,three,seven"]) == 0
    local_out = capsys.readouterr().out
    monkeypatch.setenv("DIFFCLS_API_KEY", KEY)
    assert main(["classify", *imgs, "--policy", "halving", "--classes", "one,three,seven", "--server", server.url]) == 0
    remote_out = capsys.readouterr().out

    def strip_seconds(text):
        return [line.rsplit(",", 1)[0] for line in text.splitlines()]

    assert strip_seconds(remote_out) == strip_seconds(local_out) and len(local_out.splitlines()) == 2
    assert main(["classify", *imgs, "--policy", "halving", "--json", "--server", server.url]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == imgs and rows[0]["label"] == "seven" and rows[0]["random_weights"] is False


def test_classify_cli_with_server_checks_engine_settings(server, capsys, monkeypatch):
    """--model and --loss travel for the server to check (a default not typed is not sent);
    the other engine settings are the server's, and giving one is refused, not ignored."""
    monkeypatch.setenv("DIFFCLS_API_KEY", KEY)
    img = ["examples/digit-7.png"]
    # the server scores with l2 on digits: naming them explicitly is fine
    assert (
        main(["classify", *img, "--policy", "halving", "--model", "digits", "--loss", "l2", "--server", server.url])
        == 0
    )
    assert "seven" in capsys.readouterr().out
    for extra, message in [
        (["--loss", "l1"], "loss 'l2', not 'l1'"),
        (["--model", "numbers"], "serves model 'digits', not 'numbers'"),
        (["--backend", "compile"], "--backend: with --server the server's engine settings apply"),
        (["--batch-size", "256", "--dtype", "fp32", "--no-cache"], "--batch-size, --dtype, --no-cache: with --server"),
        (["--noise-path", "n.safetensors"], "--noise-path cannot travel"),
    ]:
        code = main(["classify", *img, "--policy", "halving", *extra, "--server", server.url])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        ({"images": ["aGVsbG8="], "colour": 1}, "unknown field"),
        ({"images": ["not base64!"]}, "not valid base64"),
        ({"images": ["aGVsbG8="]}, "not an image"),
        ({"images": []}, "no images"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_requests_are_400_with_one_line(server, body, message):
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        f"{server.url}/v1/classify",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers=headers | {"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["kind"] == "bad_request" and message in r.json()["error"] and "\n" not in r.json()["error"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"classes": "one,one"}, "duplicate class name"),
        ({"classes": []}, "empty"),
        ({"classes": ["cat", "dog"]}, "identical prompt embeddings"),  # found by the engine loop, which goes on
        ({"policy": "magic"}, "unknown policy"),
        ({"options": {"n_grid": "ten"}}, "must be an int"),
        ({"options": {"bogus": 1}}, "unknown policy option"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"temperature": 0}, "temperature"),
        ({"abstain_ood": "yes"}, "abstain_ood must be true or false"),
        ({"loss": "l1"}, "loss 'l2'"),
        ({"model": "numbers"}, "serves model 'digits', not 'numbers'"),
        ({"model": 3}, "model must be a string"),
        ({"classes": ["one"], "prompts": [{"class": "one", "prompt": "x"}]}, "not both"),
        ({"prompts": [{"class": "one"}]}, "prompts[0]"),
    ],
)
def test_bad_fields_are_400_and_the_server_goes_on(server, client, fields, message):
    pngs, _, _ = digit_pngs(1)
    body = {"images": [base64.b64encode(pngs[0]).decode()], **fields}
    r = httpx.post(f"{server.url}/v1/classify", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["kind"] == "bad_request"
    assert message in r.json()["error"] and "\n" not in r.json()["error"], r.json()
    assert client.classify(pngs, ["one", "seven"])[0]["label"] in ("one", "seven")


def test_prompt_ensembles_travel_exactly(server, client, local, tmp_path):
    from diffcls_fast.engine.prompts import read_prompts_csv

    csv = tmp_path / "p.csv"
    csv.write_text(
        "classidx,prompt,classname\n0,a handwritten digit one,one\n0,the number 1,one\n1,a handwritten digit"
        " seven,seven\n2,the number 7,seven7\n"
    )
    spec = read_prompts_csv(csv)
    pngs, _, pil = digit_pngs(2)
    for g, e in zip(client.classify(pngs, prompts=spec), local.classify(pil, spec)):
        same(g, e)


def test_unknown_paths_are_json_404_and_metrics_count_errors(server, client):
    r = httpx.get(f"{server.url}/v2/nothing")
    assert r.status_code == 404 and r.json()["kind"] == "not_found"
    r = httpx.get(f"{server.url}/v1/classify", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405
    m = parse(client.metrics())
    for name in (
        "diffcls_queue_depth",
        "diffcls_inflight_images",
        "diffcls_batch_fill",
        "diffcls_evaluations_per_second",
        "diffcls_request_duration_seconds_count",
    ):
        assert name in m
    assert m['diffcls_errors_total{kind="unauthorized"}'] >= 1 and m['diffcls_errors_total{kind="not_found"}'] >= 1
    assert (
        m['diffcls_requests_total{code="200"}'] >= 1 and m["diffcls_evaluations_total"] > 0 and m["diffcls_ready"] == 1
    )
    assert m['diffcls_request_duration_seconds_bucket{le="+Inf"}'] == m["diffcls_request_duration_seconds_count"]


def test_match_equals_local_match(server, client, local):
    pngs, _, pil = digit_pngs(2)
    caps = ["a handwritten digit one", "a handwritten digit seven", "a handwritten digit one"]
    got = client.match(pngs, caps, n_grid=4, seed=3)
    exp = local.with_options(seed=3).match(pil, caps, n_grid=4)
    np.testing.assert_allclose(np.array(got["errors"]), exp.errors, rtol=1e-5, atol=1e-7)
    assert (
        got["captions"] == caps
        and got["n_grid"] == 4
        and got["evaluations"] == exp.evaluations
        and got["images"] == ["images[0]", "images[1]"]
    )
    two = client.match(pngs, caps[:2], n_grid=2, shared_noise=True)
    assert set(two["winoground"]) == {"text", "image", "group"} and two["shared_noise"] is True
    with pytest.raises(ServerError) as e:
        client.match(pngs, [])
    assert e.value.status == 400 and "empty" in e.value.server_message


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"loss": "l1"}, "loss 'l2', not 'l1'"),
        ({"model": "numbers"}, "serves model 'digits'"),
        ({"top_k": 3}, "no classes, prompts, policy, options, temperature or top_k"),
    ],
)
def test_match_checks_model_and_loss_and_refuses_top_k(server, fields, message):
    pngs, _, _ = digit_pngs(1)
    body = {"images": [base64.b64encode(pngs[0]).decode()], "captions": ["the digits one", "the digits two"], **fields}
    r = httpx.post(f"{server.url}/v1/match", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and message in r.json()["error"], r.json()


def test_malformed_params_and_deep_json_are_400(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    pngs, _, _ = digit_pngs(1)
    files = [("images", ("a.png", pngs[0], "image/png"))]
    r = httpx.post(f"{server.url}/v1/classify", files=files, data={"params": '"x"'}, headers=headers)
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"], r.json()
    r = httpx.post(
        f"{server.url}/v1/classify", content=b"[" * 100_000, headers=headers | {"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["kind"] == "bad_request", r.json()


def test_a_params_part_over_one_mib_is_not_a_multipart_error(server):
    # Starlette's default part limit (1 MiB) is under the body limit: a long prompt list sent by the
    # client (multipart) must get the same answer as the same request as JSON.
    pngs, _, _ = digit_pngs(1)
    params = {"classes": ["one", "seven"], "names": ["x" * 1_200_000]}
    files = [("images", ("a.png", pngs[0], "image/png"))]
    r = httpx.post(
        f"{server.url}/v1/classify",
        files=files,
        data={"params": json.dumps(params)},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert "malformed multipart" not in r.text, r.text[:300]


def test_classify_cli_untyped_request_options_are_the_servers(capsys, monkeypatch):
    """Untyped --policy/--seed/--temperature/policy options take the server's defaults; typed ones travel."""
    monkeypatch.delenv("DIFFCLS_API_KEY", raising=False)
    server_clf = lambda: make_classifier("halving", seed=7, temperature=0.5, rounds=[2, 4, 8])  # noqa: E731
    with ServerThread(server_clf, warmup=False) as s:
        assert main(["classify", "examples/digit-7.png", "--json", "--server", s.url]) == 0
        remote = json.loads(capsys.readouterr().out)
        assert (
            main(
                [
                    "classify",
                    "examples/digit-7.png",
                    "--json",
                    "--server",
                    s.url,
                    "--seed",
                    "0",
                    "--policy",
                    "ttest",
                    "--min-scores",
                    "5",
                ]
            )
            == 0
        )
        typed = json.loads(capsys.readouterr().out)
    from diffcls_fast.images import load_image

    im = load_image("examples/digit-7.png")
    server_side = server_clf().classify([im])[0].to_dict()
    local_typed = (
        make_classifier("ttest", seed=0, temperature=0.5, min_scores=5).classify([im])[0].to_dict()
    )  # the server's temperature stays: not typed
    for got, want in ((remote, server_side), (typed, local_typed)):
        assert got["label"] == want["label"] and got["evaluations"] == want["evaluations"], (got, want)
        assert [t["p"] for t in got["top"]] == pytest.approx([t["p"] for t in want["top"]], rel=1e-6)
    assert "rounds=[2, 4, 8]" in remote["policy"] and typed["policy"].startswith("ttest(min=5,")


def test_a_multi_frame_image_is_noted_in_the_response_warnings(server):
    import io


    pngs, _, pil = digit_pngs(1)
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=[pil[0].rotate(90)])
    body = {"images": [base64.b64encode(buf.getvalue()).decode()], "classes": "one, seven"}
    r = httpx.post(f"{server.url}/v1/classify", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    assert r.status_code == 200, r.text
    assert any("has 2 frames" in w for w in r.json()["warnings"]), r.json()["warnings"]
    result = r.json()["results"][0]
    assert {"out_of_distribution", "ood_score", "abstained"} <= set(result)  # the flag's fields travel
