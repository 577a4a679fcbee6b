"""A small client for ``diffcls-fast serve``::

    from diffcls_fast.client import Client

    with Client("http://127.0.0.1:8000") as c:              # api_key=... or $DIFFCLS_API_KEY
        for r in c.classify(["examples/digit-7.png"], ["one", "seven"]):
            print(r["image"], r["label"], r["top"][:2])

``classify`` returns the per-image objects of ``diffcls-fast classify --json``.
Images are paths, bytes (an encoded image file) or PIL images. Light: it imports
httpx and the standard library only (no torch), so a script that talks to a warm
server starts in a fraction of a second. A non-200 answer raises
:class:`ServerError` with the server's one-line message.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, UserError

API_KEY_ENV = "DIFFCLS_API_KEY"


class ServerError(UserError):
    """The server refused or failed a request: ``status`` (HTTP), ``kind`` and the message."""

    def __init__(self, status: int, kind: str, message: str, retry_after: float | None = None):
        super().__init__(f"server answered {status} ({kind}): {message}")
        self.status, self.kind, self.server_message, self.retry_after = status, kind, message, retry_after


def _httpx():
    try:
        import httpx
    except ImportError:
        raise BackendUnavailable("the client needs httpx; pip install 'diffcls-fast[serve]'") from None
    return httpx


def spec_to_rows(spec) -> list[dict[str, str]]:
    """A :class:`ClassSpec` as the request's ``prompts`` rows; the server rebuilds exactly this spec."""
    return [
        {"class": spec.names[c], "prompt": spec.prompts[int(i)]}
        for c in range(len(spec))
        for i in spec.class_prompts[c]
    ]


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0):
        httpx = _httpx()
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- endpoints -------------------------------------------------------------------------
    def classify(self, images: Any, classes: Sequence[str] | str | None = None, **kw: Any) -> list[dict]:
        """One ``classify --json`` object per image, in input order; see :meth:`classify_response` for the options."""
        return self.classify_response(images, classes, **kw)["results"]

    def classify_response(
        self,
        images: Any,
        classes: Sequence[str] | str | None = None,
        *,
        prompts: Any = None,
        seed: int | None = None,
        policy: str | None = None,
        temperature: float | None = None,
        abstain_ood: bool | None = None,
        top_k: int = 5,
        timeout: float | None = None,
        loss: str | None = None,
        model: str | None = None,
        names: Sequence[str] | None = None,
        **options: Any,
    ) -> dict:
        """The whole answer: ``results``, ``model``, ``policy``, ``warnings``, ``evaluations_spent``, ``seconds``.

        ``prompts`` is a :class:`ClassSpec` (e.g. from ``read_prompts_csv``) or rows
        ``[{"class": name, "prompt": text}, ...]``; ``options`` are policy options
        (``min_scores=10``, ``rounds=[2, 4, 12]``, ...); ``timeout`` is the server-side
        deadline in seconds. ``loss`` and ``model``, when given, are checked by the server:
        a server scoring with another loss, or serving another model, refuses the request (400).
        """
        files = [("images", (name, data, "application/octet-stream")) for name, data in _encode_images(images, names)]
        params: dict[str, Any] = {"top_k": top_k}
        if classes is not None:
            params["classes"] = classes if isinstance(classes, str) else list(classes)
        if prompts is not None:
            params["prompts"] = prompts if isinstance(prompts, list) else spec_to_rows(prompts)
        for k, v in (
            ("seed", seed),
            ("policy", policy),
            ("temperature", temperature),
            ("abstain_ood", abstain_ood),
            ("timeout", timeout),
            ("loss", loss),
            ("model", model),
        ):
            if v is not None:
                params[k] = v
        if options:
            params["options"] = options
        return self._post("/v1/classify", files=files, data={"params": json.dumps(params)})

    def match(
        self,
        images: Any,
        captions: Sequence[str],
        *,
        n_grid: int | None = None,
        shared_noise: bool = False,
        seed: int | None = None,
        timeout: float | None = None,
        names: Sequence[str] | None = None,
    ) -> dict:
        """The ``match --json`` object: ``errors`` [images x captions] (lower = better match), ``winoground`` for 2 x 2,
        ..."""
        files = [("images", (name, data, "application/octet-stream")) for name, data in _encode_images(images, names)]
        params: dict[str, Any] = {"captions": list(captions), "shared_noise": shared_noise}
        for k, v in (("n_grid", n_grid), ("seed", seed), ("timeout", timeout)):
            if v is not None:
                params[k] = v
        return self._post("/v1/match", files=files, data={"params": json.dumps(params)})

    def models(self) -> dict:
        return self._get("/v1/models").json()

    def health(self) -> dict:
        """``{"status": "ok", ...}`` once ready; raises :class:`ServerError` (503) while loading."""
        return self._get("/healthz").json()

    def metrics(self) -> str:
        return self._get("/metrics").text

    # -- plumbing --------------------------------------------------------------------------
    def _get(self, path: str):
        return self._check(self._send("GET", path))

    def _post(self, path: str, **kw) -> dict:
        return self._check(self._send("POST", path, **kw)).json()

    def _send(self, method: str, path: str, **kw):
        httpx = _httpx()
        try:
            return self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise UserError(f"{self.url}{path}: no answer within {self._http.timeout.read} s") from None
        except httpx.TransportError as e:
            raise UserError(f"cannot reach the server at {self.url} ({type(e).__name__}: {e})") from None

    @staticmethod
    def _check(resp):
        if resp.status_code == 200:
            return resp
        try:
            err = resp.json()
            kind, msg = err.get("kind", "error"), err.get("error", resp.text)
        except ValueError:
            kind, msg = "error", resp.text.strip()[:300]
        retry = resp.headers.get("retry-after")
        raise ServerError(resp.status_code, kind, msg, float(retry) if retry and retry.isdigit() else None)


def _encode_images(images: Any, names: Sequence[str] | None) -> list[tuple[str, bytes]]:
    if isinstance(images, (str, Path, bytes, bytearray)) or _is_pil(images):
        images = [images]
    if not isinstance(images, Iterable):
        raise UserError(f"images: expected paths, bytes or PIL images (or a list of them), got {type(images).__name__}")
    out = []
    for k, im in enumerate(images):
        name = names[k] if names is not None else None
        if isinstance(im, (str, Path)):
            try:
                data = Path(im).read_bytes()
            except OSError as e:
                raise UserError(f"{im}: cannot read ({e.strerror or e})") from None
            out.append((name or str(im), data))
        elif isinstance(im, (bytes, bytearray)):
            out.append((name or f"images[{k}]", bytes(im)))
        elif _is_pil(im):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            out.append((name or f"images[{k}]", buf.getvalue()))
        else:
            raise UserError(
                f"images[{k}]: expected a path, bytes or a PIL image, got {type(im).__name__} (send arrays as PNG)"
            )
    return out


def _is_pil(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("PIL.") and hasattr(x, "save")


def classify_cli(a) -> int:
    """``diffcls-fast classify --server URL ...``: the local command's output, computed by the server."""
    from .engine.prompts import parse_class_list, read_prompts_csv

    if a.classes is not None and a.prompts is not None:
        raise UserError("give --classes or --prompts, not both")
    from .arguments import ENGINE_WIDE

    given = getattr(a, "given", set())
    if "noise_path" in given:
        raise UserError(
            "--noise-path cannot travel to a server; start the server with it (diffcls-fast serve --noise-path ...)"
        )
    # --model and --loss are sent for the server to check; the other engine settings are the server's
    # own, and one given here would be silently ignored.
    ignored = [d for d in ENGINE_WIDE if d in given and d not in ("model", "loss", "noise_path")]
    if ignored:
        opts = ", ".join("--" + d.replace("_", "-") for d in ignored)
        it = "it" if len(ignored) == 1 else "them"
        raise UserError(
            f"{opts}: with --server the server's engine settings apply; drop {it}, or start the server with {it}"
            " (diffcls-fast serve ...)"
        )
    prompts = read_prompts_csv(a.prompts) if a.prompts else None
    if a.classes is not None:
        parse_class_list(a.classes)  # the names' checks, before anything is sent
    for im in a.images:
        p = Path(im)
        if not p.is_file():
            raise UserError(f"{im}: no such file" if not p.exists() else f"{im}: not a file")
    from .arguments import policy_options  # the same option set as a local run (it imports no torch)

    # Per-request options travel when typed; the rest are the server's own defaults (its --policy,
    # --seed, --temperature, policy options), as for any client of that server.
    options = {k: v for k, v in policy_options(a).items() if k in given}
    with Client(a.server, api_key=getattr(a, "api_key", None)) as c:
        resp = c.classify_response(
            list(a.images),
            a.classes,
            prompts=prompts,
            seed=a.seed if "seed" in given else None,
            policy=a.policy if "policy" in given else None,
            temperature=a.temperature if "temperature" in given else None,
            abstain_ood=True if getattr(a, "abstain_ood", False) else None,
            loss=a.loss if "loss" in given else None,  # unset: the server's loss, whatever it is
            model=a.model if "model" in given else None,
            names=[str(p) for p in a.images],
            **options,
        )
    for w in resp.get("warnings", []):
        print(f"diffcls-fast: warning: {w}", file=sys.stderr)
    results = resp["results"]
    for r in results:
        if a.json:
            print(json.dumps(r))
        else:
            from .output import result_line

            print(result_line(r["image"], r))
    if not a.json:
        print(
            f"# {resp['describe']} at {a.server}, {resp['policy']}; {resp['evaluations_spent']} evals,"
            f" {resp['seconds']:.2f} s round trip",
            file=sys.stderr,
        )
    failed = sum(r["error"] is not None for r in results)
    if failed:
        print(f"diffcls-fast: {failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0
