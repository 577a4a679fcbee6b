"""The noise bank: the timestep draws and noise of sample i of an image.

Every random number the engine uses is a pure function of ``(seed, image key,
sample index, stream)``. The image key is a hash of the image's input pixels, so the
same image gets the same noise whether it is classified alone or among 10,000
others, in any order and at any batch size. Noise is drawn on the CPU with
numpy's counter-seeded generators, so it is also identical across devices.

A saved noise tensor ``[N, C, H, W]`` can replace the generator (the official
code's ``--noise_path``): sample i then uses row i, for every image.
"""

from __future__ import annotations

import hashlib
import numbers
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

_NOISE, _UNIFORM = 0, 1  # independent streams


def image_key(x0: torch.Tensor) -> int:
    """A 63-bit key from a tensor's float32 bytes (the engine passes the preprocessed input pixels).

    ``+ 0.0`` turns -0.0 into 0.0 (IEEE: -0 + 0 = +0): the same pixel values give the same key,
    and so the same noise and timesteps, whichever arithmetic produced them."""
    data = (x0.detach().to("cpu", torch.float32) + 0.0).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


def check_seed(seed: object) -> int:
    """The seed as a Python int: any non-negative integer (all of its bits are used), else a UserError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def _non_finite_rows(t: torch.Tensor) -> str:
    """'row(s) 3, 17 of 60' for the rows of ``t`` holding NaN or inf; '' if there are none."""
    bad = torch.nonzero(~torch.isfinite(t.reshape(len(t), -1)).all(dim=1)).flatten().tolist()
    if not bad:
        return ""
    shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    return f"row(s) {shown} of {len(t)}"


class NoiseBank:
    """The noise of every (image, sample): a function of (seed, image key, sample index), never of arrival order.

    ``saved``: a noise tensor whose row i is sample i of every image. ``shared``: every image
    draws the samples of key 0 (``match --shared-noise``: one set of (t, eps) for all images).
    """

    def __init__(self, shape: tuple[int, ...], seed: int = 0, saved: torch.Tensor | None = None, shared: bool = False):
        self.shape = tuple(shape)
        self.seed = check_seed(seed)
        self.shared = shared
        self.saved = None
        if saved is not None:
            saved = torch.as_tensor(saved, dtype=torch.float32)
            if tuple(saved.shape[1:]) != self.shape:
                raise UserError(
                    f"saved noise has rows of shape {tuple(saved.shape[1:])}, but the model's latents are {self.shape}"
                )
            bad = _non_finite_rows(saved)
            if bad:
                # Row i is sample i of every image: a NaN/inf row would fail every image that reaches it.
                raise UserError(f"saved noise holds NaN or inf in {bad}")
            self.saved = saved.contiguous()

    def with_seed(self, seed: int) -> NoiseBank:
        """This bank under another seed (a saved noise tensor stays, checked once)."""
        return self._copy(seed=check_seed(seed))

    def shared_across_images(self) -> NoiseBank:
        """This bank with one set of samples for every image."""
        return self._copy(shared=True)

    def _copy(self, **changes) -> NoiseBank:
        bank = NoiseBank(self.shape, changes.get("seed", self.seed), shared=changes.get("shared", self.shared))
        bank.saved = self.saved
        return bank

    def _rng(self, key: int, i: int, stream: int) -> np.random.Generator:
        # SeedSequence splits each int into 32-bit words, so a seed below 2**32 is one word (the
        # streams of those seeds are unchanged from when the seed was truncated to 32 bits) and a
        # larger seed adds words. The other four entries are always one word each, so the word
        # count tells the seed's length and no two (seed, key, i, stream) share an entropy list.
        if self.shared:
            key = 0
        return np.random.default_rng([self.seed, key & 0xFFFFFFFF, key >> 32, int(i), stream])

    def noise(self, key: int, i: int) -> torch.Tensor:
        """eps of sample ``i`` of image ``key``: float32 [C, H, W] on the CPU."""
        if self.saved is not None:
            if i >= self.saved.shape[0]:
                raise UserError(
                    f"saved noise has {self.saved.shape[0]} rows, but sample {i} was requested; save more rows or lower"
                    " the sample count"
                )
            return self.saved[i]
        arr = self._rng(key, i, _NOISE).standard_normal(self.shape, dtype=np.float32)
        return torch.from_numpy(arr)

    def uniform(self, key: int, i: int) -> float:
        """A U[0, 1) draw for sample ``i`` of image ``key`` (random timesteps, rotations)."""
        return float(self._rng(key, i, _UNIFORM).random())


def load_noise_file(path: str | Path) -> tuple[torch.Tensor, str]:
    """``(noise [N, C, H, W] float32, sha256 of the file)`` from a safetensors file with a tensor ``noise``.

    Every way the file can be wrong is one :class:`UserError`; the row shape is checked
    against the model later (:class:`NoiseBank`), since it needs the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such noise file")
    if not p.is_file():
        raise UserError(f"{p}: not a file (expected a safetensors file with a tensor 'noise' [N, C, H, W])")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read noise file ({e.strerror or e})") from None
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{p}: not a safetensors file ({first})") from None
    if "noise" not in tensors:
        raise UserError(f"{p}: no tensor named 'noise' (found {', '.join(sorted(tensors)) or 'none'})")
    noise = tensors["noise"]
    if noise.dim() != 4 or noise.shape[0] < 1:
        raise UserError(f"{p}: 'noise' has shape {tuple(noise.shape)}; expected [N, C, H, W] with N >= 1")
    if not noise.is_floating_point():
        raise UserError(f"{p}: 'noise' has dtype {str(noise.dtype).removeprefix('torch.')}; expected a float tensor")
    noise = noise.to(torch.float32)
    bad = _non_finite_rows(noise)
    if bad:
        raise UserError(f"{p}: 'noise' holds NaN or infinite values in {bad}")
    return noise, hashlib.sha256(data).hexdigest()
