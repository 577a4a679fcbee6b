"""The ASGI app (Starlette) and ``serve()`` (uvicorn).

Endpoints::

    POST /v1/classify   images (multipart files 'images' + optional JSON field 'params', or a JSON body
                        with base64 'images'), classes | prompts, seed, policy, options, temperature,
                        top_k, timeout -> {"results": [one `classify --json` object per image], ...}
    POST /v1/match      images + captions (+ n_grid, shared_noise, seed) -> the `match --json` object
    GET  /v1/models     the served model, its classes and engine settings
    GET  /healthz       200 once the model is loaded and warmed up, else 503
    GET  /metrics       Prometheus text format

With an API key (``--api-key`` or ``$DIFFCLS_API_KEY``), ``/v1/*`` and ``/metrics``
need ``Authorization: Bearer KEY`` (compared in constant time); ``/healthz`` stays
open for probes. Every error is one JSON line ``{"error": "...", "kind": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import UserError
from .engine_loop import EngineLoop, Job
from .limits import HTTPError, Limits, bad, decode_image, parse_params, too_large
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("diffcls_fast.server")
API_KEY_ENV = "DIFFCLS_API_KEY"


def _same_model(given: str, model) -> bool:
    """Whether a client's ``--model`` names the served model: its name (``digits``, a folder's
    name; a client on another machine may spell the folder's path its own way), or its path."""
    from pathlib import Path

    if given == model.name or Path(given).expanduser().name == model.name:
        return True
    return bool(model.path) and Path(given).expanduser().resolve() == Path(model.path).resolve()


def _error(e: HTTPError) -> JSONResponse:
    return JSONResponse({"error": e.message, "kind": e.kind}, status_code=e.status, headers=e.headers)


def create_app(
    load: Callable[[], Any],
    limits: Limits | None = None,
    api_key: str | None = None,
    warmup: bool = True,
    on_stopped: Callable[[int], None] | None = None,
    on_load_failed: Callable[[str], None] | None = None,
) -> Starlette:
    """The app; ``load()`` returns the :class:`DiffusionClassifier` to serve (called once, in the engine loop thread).
    ``on_stopped(n)`` runs after shutdown; ``n`` requests were cut short by the graceful-shutdown timeout.
    ``on_load_failed(reason)`` runs (in the loop thread) when ``load()`` raises; without it the reason is logged and
    the app stays up, answering 503 with the reason (for embedding)."""
    limits = limits or Limits()
    metrics = Metrics()
    cut_short = [0]  # requests answered 503 because the shutdown timeout cancelled them

    def shutdown_error() -> HTTPError:
        # uvicorn cancels the handlers still running when --graceful-timeout passes; the client gets
        # this JSON line (not a bare 500) and its work leaves the engine (run_job cancelled the job).
        cut_short[0] += 1
        return HTTPError(
            503,
            "shutting_down",
            "the server shut down (--graceful-timeout passed) before this request was answered; its work was dropped",
        )

    loop = EngineLoop(load, metrics, max_queue=limits.max_queue, warmup=warmup, on_load_failed=on_load_failed)
    key = api_key.encode() if api_key else None

    def authorize(request: Request) -> None:
        if key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise HTTPError(
                401,
                "unauthorized",
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                {"WWW-Authenticate": "Bearer"},
            )

    async def read_body(request: Request) -> bytes:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > limits.max_body_bytes:
            raise too_large(f"the request body is {int(n)} bytes; the limit is {limits.max_body_bytes}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise too_large(f"the request body is over the limit of {limits.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the client closed before sending the whole body: a dropped client, not a bug
            raise HTTPError(
                499, "client_closed", "the client closed the connection before the body was complete"
            ) from None
        return b"".join(chunks)

    async def parse_request(request: Request) -> tuple[dict, list[tuple[str, bytes]]]:
        """(the JSON fields, the uploaded files) of a JSON or multipart request."""
        body = await read_body(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):

            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                # max_part_size: a part (the params JSON with a large prompt list) may be as large as the body limit
                form = await Request(request.scope, replay).form(
                    max_files=limits.max_images + 1, max_fields=64, max_part_size=limits.max_body_bytes
                )
            except Exception as e:  # python-multipart's and Starlette's parse errors
                if "Too many files" in str(
                    e
                ):  # Starlette stops counting at max_files: the same 413 as max_images + 1 files
                    raise too_large(
                        f"more than {limits.max_images} images in one request; the limit is {limits.max_images}"
                    ) from None
                raise bad(f"malformed multipart body ({type(e).__name__}: {str(e)[:200]})") from None
            files, fields = [], {}
            for name, value in form.multi_items():
                if hasattr(value, "read"):
                    if name != "images":
                        raise bad(f"unexpected file field {name!r}; upload images as 'images'")
                    files.append((value.filename or f"images[{len(files)}]", await value.read()))
                elif name == "params":
                    try:
                        params = json.loads(value)
                    except (json.JSONDecodeError, TypeError, RecursionError):
                        raise bad("the 'params' field is not valid JSON") from None
                    if not isinstance(params, dict):
                        raise bad(f"the 'params' field must be a JSON object, got a JSON {type(params).__name__}")
                    fields.update(params)
                elif name in ("classes", "policy"):
                    fields[name] = value
                elif name in ("seed", "top_k"):
                    try:
                        fields[name] = int(value)
                    except ValueError:
                        raise bad(f"{name} must be an integer, got {value!r}") from None
                else:
                    raise bad(f"unexpected form field {name!r}; put options in the JSON field 'params'")
            return fields, files
        if not body:
            raise bad("empty request body; send JSON or multipart/form-data")
        try:
            data = json.loads(body)
        except (
            json.JSONDecodeError,
            UnicodeDecodeError,
            RecursionError,
        ):  # RecursionError: thousands of nested brackets
            raise bad("the request body is not valid JSON (send application/json or multipart/form-data)") from None
        if not isinstance(data, dict):
            raise bad("the request must be a JSON object")
        return data, []

    def check_engine_fields(params, clf) -> None:
        """A request may name the model and loss it expects; this server has one of each."""
        if params.loss is not None and params.loss != clf.loss:
            raise bad(f"this server scores with loss {clf.loss!r}, not {params.loss!r}")
        if params.model is not None and not _same_model(params.model, clf.model):
            raise bad(f"this server serves model {clf.model.name!r}, not {params.model!r}")

    def check_ready() -> None:
        if loop.load_error is not None:
            raise HTTPError(503, "not_ready", f"the model failed to load: {loop.load_error}")
        if not loop.ready.is_set():
            raise HTTPError(
                503,
                "not_ready",
                "the model is still loading; retry shortly (GET /healthz says when it is ready)",
                {"Retry-After": "2"},
            )

    async def run_job(request: Request, job: Job) -> list:
        fut = asyncio.wrap_future(loop.submit(job))
        # The loop may still fail the job after this handler gave up on it (a shutdown cut it short, the client
        # left): retrieve that outcome so asyncio does not log "Future exception was never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    return fut.result()
                if await request.is_disconnected():  # the client went away: drop its work
                    fut.cancel()
                    loop.cancel(job)
                    raise HTTPError(499, "client_closed", "the client closed the connection")
        except asyncio.CancelledError:
            fut.cancel()
            loop.cancel(job)
            raise

    async def classify(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            authorize(request)
            check_ready()
            fields, files = await parse_request(request)
            params = parse_params(fields, files, limits)
            clf = loop.clf
            check_engine_fields(params, clf)
            hw, ch = clf.model.image_hw, clf.model.image_channels
            notes: list[str] = []  # about the images (several frames); the prompts' notices come from the engine
            pixels = await run_in_threadpool(
                lambda: [decode_image(n, d, limits, hw, ch, notes) for n, d in params.images]
            )
            job = Job(pixels, params.classes, params.options, params.timeout)
            results = await run_job(request, job)
            view_policy = results[0].policy if results else ""
            body = {
                "results": [
                    {"image": name, **r.to_dict(params.top_k), "random_weights": clf.model.random_weights}
                    for (name, _), r in zip(params.images, results)
                ],
                "model": clf.model.name,
                "describe": clf.model.describe(),
                "policy": view_policy,
                "warnings": notes + list(job.warnings),
                "evaluations_spent": int(sum(r.evaluations_spent for r in results)),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            metrics.observe_request(200, time.perf_counter() - t0)
            return JSONResponse(body)
        except HTTPError as e:
            metrics.observe_request(e.status, time.perf_counter() - t0, e.kind)
            return _error(e)
        except asyncio.CancelledError:
            e = shutdown_error()
            metrics.observe_request(e.status, time.perf_counter() - t0, e.kind)
            return _error(e)
        except Exception as e:  # a bug: one JSON line, the traceback in the server's log
            log.exception("classify request failed")
            metrics.observe_request(500, time.perf_counter() - t0, "internal")
            return _error(HTTPError(500, "internal", f"internal error: {type(e).__name__}: {e}"))

    async def match(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            authorize(request)
            check_ready()
            fields, files = await parse_request(request)
            from ..engine.match import check_captions

            extra = {k: fields.pop(k) for k in ("captions", "n_grid", "shared_noise") if k in fields}
            if "captions" not in extra:
                raise bad("match needs 'captions', a list of full prompts")
            try:
                captions = check_captions(extra["captions"])
            except UserError as e:
                raise bad(str(e)) from None
            n_grid = extra.get("n_grid")
            if n_grid is not None and (isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1):
                raise bad(f"n_grid must be a positive integer, got {n_grid!r}")
            shared = extra.get("shared_noise", False)
            if not isinstance(shared, bool):
                raise bad(f"shared_noise must be true or false, got {shared!r}")
            if len(set(captions)) > limits.max_classes:
                raise too_large(
                    f"{len(set(captions))} distinct captions in one request; the limit is {limits.max_classes}"
                )
            params = parse_params(fields, files, limits)
            if params.classes is not None or set(params.options) - {"seed"} or "top_k" in fields:
                raise bad(
                    "match takes captions, n_grid, shared_noise, seed, timeout, loss and model (no classes, prompts,"
                    " policy, options, temperature or top_k)"
                )
            clf = loop.clf
            check_engine_fields(params, clf)
            hw, ch = clf.model.image_hw, clf.model.image_channels
            pixels = await run_in_threadpool(lambda: [decode_image(n, d, limits, hw, ch) for n, d in params.images])
            job = Job(pixels, None, params.options, params.timeout, match=(captions, n_grid, shared))
            res = await run_job(request, job)
            body = {
                "images": [n for n, _ in params.images],
                **res.to_dict(),
                "model": clf.model.name,
                "random_weights": clf.model.random_weights,
            }
            metrics.observe_request(200, time.perf_counter() - t0)
            return JSONResponse(body)
        except HTTPError as e:
            metrics.observe_request(e.status, time.perf_counter() - t0, e.kind)
            return _error(e)
        except asyncio.CancelledError:
            e = shutdown_error()
            metrics.observe_request(e.status, time.perf_counter() - t0, e.kind)
            return _error(e)
        except Exception as e:
            log.exception("match request failed")
            metrics.observe_request(500, time.perf_counter() - t0, "internal")
            return _error(HTTPError(500, "internal", f"internal error: {type(e).__name__}: {e}"))

    async def models(request: Request) -> Response:
        try:
            authorize(request)
            check_ready()
        except HTTPError as e:
            metrics.error(e.kind)
            return _error(e)
        clf = loop.clf
        m = clf.model
        return JSONResponse(
            {
                "models": [
                    {
                        "id": m.name,
                        "describe": m.describe(),
                        "classes": list(m.class_names),
                        "prompt_template": m.prompt_template,
                        "image_size": list(m.image_hw),
                        "image_channels": m.image_channels,
                        "policy": clf.policy_cfg.describe(),
                        "seed": clf.seed,
                        "loss": clf.loss,
                        "buckets": list(clf.buckets),
                        "max_inflight": clf.config.max_inflight,
                        "backend": m.backend,
                        "device": str(m.device),
                        "dtype": str(m.dtype).removeprefix("torch."),
                        "random_weights": m.random_weights,
                    }
                ],
                "limits": {k: v for k, v in vars(limits).items()},
            }
        )

    async def healthz(request: Request) -> Response:
        if loop.load_error is not None:
            return JSONResponse({"status": "failed", "error": loop.load_error}, status_code=503)
        if not loop.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse(
            {"status": "ok", "model": loop.clf.model.name, "warmup_seconds": round(loop.warmup_seconds, 3)}
        )

    async def metrics_endpoint(request: Request) -> Response:
        try:
            authorize(request)
        except HTTPError as e:
            metrics.error(e.kind)
            return _error(e)
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        metrics.error(kind)
        return JSONResponse(
            {"error": str(exc.detail), "kind": kind}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop.start()
        try:
            yield
        finally:
            # uvicorn calls this after the open connections finished: the accepted requests are answered.
            await run_in_threadpool(loop.stop)
            if on_stopped is not None:
                on_stopped(cut_short[0])

    app = Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/match", match, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.engine_loop = loop
    app.state.metrics = metrics
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), or a UserError saying why not."""

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r}: cannot resolve ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    load: Callable[[], Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
    warmup: bool = True,
    graceful_timeout: float | None = None,
) -> None:
    """Run the server until SIGINT/SIGTERM; then it stops accepting, finishes the requests in flight and exits."""
    import uvicorn

    sock = bind(host, port)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None

    failed: list[str] = []  # why the model did not load, when it did not
    server: Any = None

    def load_failed(reason: str) -> None:
        # A server that cannot serve exits at once (non-zero), like every other command with a bad model,
        # instead of answering 503 "failed" until someone notices.
        failed.append(reason)
        server.should_exit = True

    def stopped(cut: int) -> None:
        if failed:
            return
        what = (
            "requests in flight answered"
            if not cut
            else f"{cut} request(s) cut short by --graceful-timeout, answered 503"
        )
        print(f"diffcls-fast: server stopped ({what})", file=sys.stderr, flush=True)

    app = create_app(load, limits, api_key, warmup, on_stopped=stopped, on_load_failed=load_failed)
    h, p = sock.getsockname()[:2]
    shown = f"[{h}]" if ":" in h else h
    print(
        f"diffcls-fast: serving on http://{shown}:{p} (loading the model; GET /healthz says when it is"
        f" ready){'; API key required' if api_key else ''}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_timeout, access_log=False
    )
    # On SIGINT/SIGTERM uvicorn stops accepting, waits for the open requests, runs the lifespan
    # shutdown (the engine loop finishes what it accepted), then re-raises the signal: the exit
    # status says which signal stopped the server, as process supervisors expect.
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if failed:
        raise UserError(f"the model failed to load, so the server stopped: {failed[0]}")


class ServerThread:
    """The server in a background thread of this process, on ``host:port`` (port 0: a free one):
    for tests and for embedding. ``start()`` returns once ``/healthz`` says ready."""

    def __init__(
        self,
        load: Callable[[], Any],
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        api_key: str | None = None,
        warmup: bool = True,
    ):
        import threading

        import uvicorn

        self.sock = bind(host, port)
        h, p = self.sock.getsockname()[:2]
        self.url = f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}"
        self.app = create_app(load, limits, api_key, warmup)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="diffcls-server", daemon=True
        )

    def start(self, timeout: float = 300.0) -> ServerThread:
        self.thread.start()
        loop = self.app.state.engine_loop
        t0 = time.monotonic()
        while not loop.ready.wait(0.1):
            if loop.load_error is not None or time.monotonic() - t0 > timeout or not self.thread.is_alive():
                self.stop()
                raise RuntimeError(f"the server did not become ready: {loop.load_error or 'timeout'}")
        while not self.server.started:  # uvicorn accepts connections once its startup finished
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
