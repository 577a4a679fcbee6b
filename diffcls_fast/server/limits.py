"""What a request may ask for, and how much: parsing and limits of ``POST /v1/classify``.

Every way a request can be wrong is one :class:`HTTPError` with a one-line
message: 400 for a malformed request (bad JSON, unknown field, bad value, not
an image), 413 for one over a limit (body bytes, pixels of one image, images or
classes or prompts per request). Nothing here touches the model or the engine loop, so a
bad request costs the handler thread only.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.policies import OPTIONS
from ..engine.prompts import ClassSpec, parse_class_list
from ..errors import UserError


@dataclass
class Limits:
    max_body_bytes: int = 16 << 20  # whole request body
    max_image_pixels: int = 4096 * 4096  # width x height of one image, checked before it is decoded
    max_images: int = 64  # per request
    max_classes: int = 1000  # per request
    # per request, counted class by class: a prompt ensemble's class costs one denoiser row per prompt
    # and one condition row each, so 1,000 classes of 80 templates is 80x the work of the class limit
    max_prompts: int = 8000
    max_queue: int = 256  # requests accepted and not yet answered; more get 429
    default_timeout: float = 60.0  # seconds from acceptance to answer, unless the request says otherwise
    max_timeout: float = 600.0


class HTTPError(Exception):
    """An error answer: status, kind (the ``errors_total`` label), one-line message, extra headers."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def bad(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def too_large(message: str) -> HTTPError:
    return HTTPError(413, "too_large", message)


_FIELDS = {
    "images",
    "names",
    "classes",
    "prompts",
    "seed",
    "policy",
    "options",
    "temperature",
    "abstain_ood",
    "top_k",
    "timeout",
    "loss",
    "model",
}  # /v1/match adds captions, n_grid, shared_noise


@dataclass
class ClassifyParams:
    """A checked request (images still as bytes)."""

    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, encoded image)
    classes: ClassSpec | list[str] | None = (
        None  # names (the model's template makes the prompts), a spec, or the model's default
    )
    options: dict[str, Any] = field(default_factory=dict)  # DiffusionClassifier.with_options keywords
    top_k: int = 5
    timeout: float = 60.0
    loss: str | None = None
    model: str | None = None  # the model the client expects (checked against the served one)


def parse_params(body: dict, files: list[tuple[str, bytes]], limits: Limits) -> ClassifyParams:
    """Check the fields of a classify request; ``files`` are the multipart uploads (JSON requests use ``images``)."""
    if not isinstance(body, dict):
        raise bad("the request must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(sorted(_FIELDS))}")
    p = ClassifyParams(timeout=limits.default_timeout)
    if files and "images" in body:
        raise bad("send images either as multipart files or as base64 in 'images', not both")
    p.images = list(files) if files else _b64_images(body.get("images"), body.get("names"))
    if not p.images:
        raise bad("no images: send one or more (multipart files named 'images', or base64 strings in 'images')")
    if len(p.images) > limits.max_images:
        raise too_large(f"{len(p.images)} images in one request; the limit is {limits.max_images}")
    if "classes" in body and "prompts" in body:
        raise bad("give 'classes' or 'prompts', not both")
    try:
        if body.get("classes") is not None:
            p.classes = _classes(body["classes"])
        elif body.get("prompts") is not None:
            p.classes = _prompts(body["prompts"])
    except UserError as e:
        raise bad(str(e)) from None
    n_cls = len(p.classes) if p.classes is not None else 0
    if n_cls > limits.max_classes:
        raise too_large(f"{n_cls} classes in one request; the limit is {limits.max_classes}")
    n_prompts = sum(len(ids) for ids in p.classes.class_prompts) if isinstance(p.classes, ClassSpec) else n_cls
    if n_prompts > limits.max_prompts:
        raise too_large(
            f"{n_prompts} prompts in one request (a class's prompts each cost a denoiser row per sample); the limit is"
            f" {limits.max_prompts}"
        )
    if body.get("seed") is not None:
        p.options["seed"] = _int("seed", body["seed"], lo=0)
    if body.get("policy") is not None:
        if not isinstance(body["policy"], str):
            raise bad(f"policy must be a string, got {body['policy']!r}")
        p.options["policy"] = body["policy"]
    if body.get("temperature") is not None:
        t = body["temperature"]
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise bad(f"temperature must be a finite number > 0, got {t!r}")
        p.options["temperature"] = float(t)
    if body.get("abstain_ood") is not None:
        if not isinstance(body["abstain_ood"], bool):
            raise bad(f"abstain_ood must be true or false, got {body['abstain_ood']!r}")
        p.options["abstain_ood"] = body["abstain_ood"]
    p.options.update(_policy_options(body.get("options")))
    if body.get("top_k") is not None:
        p.top_k = _int("top_k", body["top_k"], lo=1)
    if body.get("timeout") is not None:
        t = body["timeout"]
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise bad(f"timeout must be a number of seconds > 0, got {t!r}")
        if t > limits.max_timeout:
            raise too_large(f"timeout {t} s is over this server's limit of {limits.max_timeout:g} s")
        p.timeout = float(t)
    if body.get("loss") is not None:
        if not isinstance(body["loss"], str):
            raise bad(f"loss must be a string, got {body['loss']!r}")
        p.loss = body["loss"]
    if body.get("model") is not None:
        if not isinstance(body["model"], str):
            raise bad(f"model must be a string, got {body['model']!r}")
        p.model = body["model"]
    return p


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise bad(f"{name} must be >= {lo}, got {v}")
    return v


def _b64_images(images: Any, names: Any) -> list[tuple[str, bytes]]:
    if images is None:
        return []
    if not isinstance(images, list):
        raise bad("'images' must be a list of base64 strings")
    if names is not None and (
        not isinstance(names, list) or len(names) != len(images) or not all(isinstance(n, str) for n in names)
    ):
        raise bad("'names' must be a list of strings, one per image")
    out = []
    for i, s in enumerate(images):
        if not isinstance(s, str):
            raise bad(f"images[{i}] must be a base64 string, got {type(s).__name__}")
        try:
            data = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"images[{i}] is not valid base64") from None
        out.append((names[i] if names is not None else f"images[{i}]", data))
    return out


def _classes(v: Any) -> list[str] | ClassSpec:
    if isinstance(v, str):
        return parse_class_list(v).names  # the CLI's parsing and checks; the model's template is applied later
    if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
        raise bad("'classes' must be a list of class names (strings) or a comma-separated string")
    ClassSpec.from_names(v)  # the same checks as the Python API
    return list(v)


def _prompts(rows: Any) -> ClassSpec:
    """``[{"class": name, "prompt": text}, ...]``: several rows of a class form a prompt ensemble.

    The spec is built exactly as :func:`read_prompts_csv` builds it from the same rows
    in the same order (:func:`diffcls_fast.client.spec_to_rows`), so ``--server`` with
    ``--prompts FILE.csv`` scores the same rows.
    """
    if not isinstance(rows, list) or not rows:
        raise bad('\'prompts\' must be a non-empty list of {"class": name, "prompt": text} objects')
    order: dict[str, list[str]] = {}
    for k, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != {"class", "prompt"} or not all(isinstance(x, str) for x in r.values()):
            raise bad(f'prompts[{k}] must be an object {{"class": name, "prompt": text}} of strings')
        name, prompt = r["class"].strip(), r["prompt"].strip()
        if not name or not prompt:
            raise bad(f"prompts[{k}] has an empty class name or prompt")
        order.setdefault(name, []).append(prompt)
    prompts: list[str] = []
    index: dict[str, int] = {}
    class_prompts = []
    for ps in order.values():
        ids = []
        for pr in ps:
            if pr not in index:
                index[pr] = len(prompts)
                prompts.append(pr)
            ids.append(index[pr])
        class_prompts.append(np.array(sorted(set(ids))))
    return ClassSpec(list(order), prompts, class_prompts)


def _policy_options(opts: Any) -> dict[str, Any]:
    """``options``: policy options of the types their policies declare (values are checked again by the policy)."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise bad("'options' must be an object of policy options, e.g. {\"min_scores\": 10}")
    out = {}
    for k, v in opts.items():
        o = OPTIONS.get(k)
        if o is None:
            raise bad(f"unknown policy option {k!r}; expected some of {', '.join(sorted(OPTIONS))}")
        if k == "tuned" and v != "":  # a path on the server's disk: the server's own setting, not a client's
            raise bad(
                "option tuned is a server setting (serve --tuned FILE); a request asks for it with policy 'tuned'"
            )
        if o.is_list:
            if not isinstance(v, list) or not v or not all(_is(x, o.type) for x in v):
                raise bad(f"option {k} must be a non-empty list of {o.type.__name__}s, got {v!r}")
            v = [o.type(x) for x in v]
        elif not _is(v, o.type):
            raise bad(f"option {k} must be {'an' if o.type is int else 'a'} {o.type.__name__}, got {v!r}")
        else:
            v = o.type(v)
        out[k] = v
    return out


def _is(v: Any, t: type) -> bool:
    if isinstance(v, bool):
        return False
    if t is float:
        return isinstance(v, numbers.Real) and math.isfinite(v)
    return isinstance(v, t)


def decode_image(
    name: str, data: bytes, limits: Limits, hw: tuple[int, int], channels: int, notes: list[str] | None = None
):
    """Encoded image bytes -> the model's preprocessed pixels (a tensor), or an HTTPError.

    The pixel count is checked from the header, before the image is decoded (a small
    PNG can declare gigapixels). A file with several frames adds a sentence to ``notes``."""
    from PIL import Image, UnidentifiedImageError

    from ..images import frames_note, to_pixels

    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise too_large(f"{name}: {e}") from None
        raise bad(f"{name}: not an image (PIL cannot identify it)") from None
    w, h = im.size
    if w * h > limits.max_image_pixels:
        raise too_large(f"{name}: {w}x{h} = {w * h} pixels; the limit is {limits.max_image_pixels}")
    if w * h == 0:
        raise bad(f"{name}: the image has 0 pixels")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise bad(
            f"{name}: cannot decode the image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    note = frames_note(name, im)
    if note and notes is not None:
        notes.append(note)
    try:
        return to_pixels(im, hw, channels, name=name)
    except UserError as e:
        raise bad(str(e)) from None
