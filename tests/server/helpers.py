"""Shared by the server tests: encoded digit images and the classifier the servers serve."""

import io

from diffcls_fast import DiffusionClassifier, load_model
from diffcls_fast.data.digits import load_split


def digit_pngs(n: int, start: int = 0) -> tuple[list[bytes], list[int], list]:
    """The first n held-out digits as PNG bytes, their labels, and the PIL images."""
    pil, y, _ = load_split("heldout")
    out = []
    for im in pil[start : start + n]:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, [int(v) for v in y[start : start + n]], list(pil[start : start + n])


def make_classifier(policy: str = "halving", **kw) -> DiffusionClassifier:
    return DiffusionClassifier(load_model("digits", device="cpu"), policy, batch_size=64, **kw)
