"""AOTInductor export: the denoiser as ``.pt2`` packages, plus everything a Python-free runner needs.

``export_aoti(bundle, out_dir, ...)`` writes one folder:

* ``denoiser-*.pt2``: AOTInductor packages of the raw network ``out = net(sample, timestep, cond)``
  (the graph of :class:`~.spec.RawNetwork`), one per batch range (see :func:`package_ranges`);
* ``schedule.safetensors``: ``alphas_cumprod`` (float64 [T]) and the float32 tables the engine
  builds x_t with, ``sqrt_ab`` = sqrt(abar) and ``sqrt_1mab`` = sqrt(1 - abar) (computed in
  float64, then rounded, exactly as :class:`~diffcls_fast.engine.runner.Runner` does);
* ``conditions.safetensors``: the condition table of the class list, one row per prompt
  (``cond`` [P, L, D] float32, or int64 class ids [P]), computed once, as ``classify`` does;
* ``noise.safetensors`` (only with ``noise=``): the saved noise tensor (``noise`` [N, C, H, W]);
* ``manifest.json``: the model fingerprint, shapes, the packages and their batch ranges, the
  preprocessing (resolution, channels, how pixels map to [-1, 1]), the classes and which prompts
  score each, the prediction type, and the model's calibration per policy.

Batch ranges: every batch size in a range shares one package with a dynamic batch axis. A
range is split where the traced program guards on the batch size: diffusers' ``Upsample2D``
calls ``.contiguous()`` only when ``batch >= 64`` (a workaround for a PyTorch bug), and
``torch.export`` turns that Python ``if`` into a guard, so a package covers ``[2, 63]`` or
``[64, max]``, never both. Batch size 1 is padded to 2 by the callers (``torch.export``
specialises size-1 dimensions).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..models.bundle import ModelBundle
from .spec import artifact_key, export_module, raw_out_channels, spec_for

MANIFEST_VERSION = 1
# The batch size where diffusers' Upsample2D changes its traced program (see the module docstring).
UPSAMPLE_GUARD = 64
MIN_BATCH = 2  # torch.export specialises a size-1 axis; batch 1 is padded to 2
# The largest batch a package is compiled for. The native runner runs on a CPU, where batches past a few hundred
# rows gain nothing; far larger bounds (10^8) make torch.export's shape constraints fail after a minute of tracing.
MAX_BATCH = 4096


@dataclass(frozen=True)
class PackageRange:
    lo: int
    hi: int

    @property
    def file_name(self) -> str:
        return f"denoiser-b{self.lo}-{self.hi}.pt2"

    def trace_batch(self) -> int:
        return max(self.lo, min(self.hi, 16))


def has_upsample_guard(net: torch.nn.Module) -> bool:
    """True when ``net`` holds a diffusers ``Upsample2D`` (whose forward branches on batch >= 64)."""
    return any(type(m).__name__ == "Upsample2D" for m in net.modules())


def package_ranges(batch_sizes: list[int], split_at: int | None) -> list[PackageRange]:
    """The batch ranges to compile for ``batch_sizes``: one range, or two when it straddles ``split_at``."""
    # The first range starts at MIN_BATCH whatever the buckets: a dynamic axis costs nothing for small
    # batches, and callers (the native runner's last call of an image, batch 1 padded to 2) need them.
    sizes = sorted({max(MIN_BATCH, int(b)) for b in batch_sizes})
    lo, hi = MIN_BATCH, sizes[-1]
    if split_at is None or hi < split_at or lo >= split_at:
        return [PackageRange(lo, hi)]
    return [PackageRange(lo, split_at - 1), PackageRange(split_at, hi)]


def require_aoti() -> None:
    """AOTInductor needs torch >= 2.6 (``aoti_compile_and_package`` / ``aoti_load_package``) and a C++ compiler."""
    import importlib

    inductor = importlib.import_module("torch._inductor")
    if not hasattr(inductor, "aoti_compile_and_package") or not hasattr(inductor, "aoti_load_package"):
        raise UserError(f"AOTInductor export needs torch >= 2.6 (this is torch {torch.__version__})")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise UserError("AOTInductor compiles C++: no C++ compiler (c++ or g++) on PATH")


def compile_package(bundle: ModelBundle, rng: PackageRange, path: Path) -> float:
    """Export ``bundle``'s raw network with a dynamic batch axis over ``rng`` and AOT-compile it to ``path``; seconds
    taken."""
    spec = spec_for(bundle)
    module = export_module(bundle)
    args = spec.sample_input(rng.trace_batch(), bundle.device, bundle.dtype)
    t0 = time.perf_counter()
    if rng.lo == rng.hi:
        dynamic = None  # one size: a static graph
    else:
        batch = torch.export.Dim("batch", min=rng.lo, max=rng.hi)
        dynamic = {"sample": {0: batch}, "timestep": {0: batch}, "cond": {0: batch}}
    with torch.no_grad(), _quiet_pytree():
        # strict=False (torch.export's default): trace the module by running it in Python. Strict
        # (dynamo) tracing gives the same graph for the digits UNet; non-strict is the robust choice.
        try:
            ep = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        except Exception as e:  # torch's UserError "Constraints violated (batch)!" and kin: the range, not a bug
            if "Constraints violated" not in str(e):
                raise
            raise UserError(
                f"torch.export cannot compile this network for every batch in {rng.lo}..{rng.hi}"
                f" ({str(e).strip().splitlines()[0]}); give smaller --batch-sizes"
            ) from None
    tmp = path.with_name(path.stem + ".tmp.pt2")  # the packager insists on the .pt2 suffix
    with _quiet_pytree():
        torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp))
    os.replace(tmp, path)
    return time.perf_counter() - t0


def load_package(path: str | Path):
    """The compiled runner of a ``.pt2`` package: ``runner(sample, timestep, cond) -> out``."""
    with _quiet_pytree():
        return torch._inductor.aoti_load_package(str(path))


@contextlib.contextmanager
def _quiet_pytree():
    """torch 2.13's own pytree (un)pickling trips its ``LeafSpec`` FutureWarning on export and load; nothing to act
    on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        yield


class PackageSet:
    """Callable ``raw(x_t, t, cond)`` over several packages: the one whose batch range covers the call.

    A batch below every range's minimum (batch 1) is padded with copies of its first row.
    """

    def __init__(self, packages: list[tuple[PackageRange, object]]):
        self.packages = sorted(packages, key=lambda p: p[0].lo)
        self.max_batch = self.packages[-1][0].hi

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        if b > self.max_batch:
            raise ValueError(f"batch of {b} rows, but the AOTInductor packages cover batches up to {self.max_batch}")
        pad = max(0, self.packages[0][0].lo - b)
        if pad:
            x_t, t, cond = (torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) for v in (x_t, t, cond))
        n = b + pad
        for rng, runner in self.packages:
            if rng.lo <= n <= rng.hi:
                return runner(x_t.contiguous(), t.contiguous(), cond.contiguous())[:b]
        raise ValueError(f"no AOTInductor package covers batch {n} (ranges {[(r.lo, r.hi) for r, _ in self.packages]})")


def _key(bundle: ModelBundle, rng: PackageRange) -> str:
    return artifact_key(bundle, spec_for(bundle), {"format": "aoti", "range": [rng.lo, rng.hi]})


def compile_cached(
    bundle: ModelBundle, art_dir: Path, batch_sizes: list[int], force: bool = False
) -> list[tuple[PackageRange, Path, float | None]]:
    """The packages for ``batch_sizes`` under ``art_dir``, compiled unless present: (range, path, compile seconds or
    None if cached)."""
    require_aoti()
    if bundle.network is None:
        raise UserError(f"{bundle.name}: this model has no exportable torch network")
    from .onnx_export import writable_dir

    art_dir = writable_dir(art_dir)
    split = UPSAMPLE_GUARD if has_upsample_guard(bundle.network) else None
    out = []
    for rng in package_ranges(batch_sizes, split):
        path = art_dir / f"{bundle.name}-{_key(bundle, rng)}-b{rng.lo}-{rng.hi}.pt2"
        seconds = compile_package(bundle, rng, path) if force or not path.is_file() else None
        out.append((rng, path, seconds))
    return out


def cached_packages(bundle: ModelBundle, art_dir: Path, batch_sizes: list[int]) -> tuple[PackageSet, list[dict]]:
    """``--backend aoti``: the packages for ``batch_sizes`` (compiled once into ``art_dir``), as one callable, and what
    was done."""
    done = compile_cached(bundle, art_dir, batch_sizes)
    runner = PackageSet([(rng, load_package(path)) for rng, path, _ in done])
    return runner, [{"path": str(path), "range": [rng.lo, rng.hi], "compile_seconds": s} for rng, path, s in done]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def save_tensors(tensors: dict, path: Path) -> None:
    """``safetensors.torch.save_file``, with the permissions of any file this process creates (0666 less the
    umask): safetensors creates its files 0600, so an export folder would be half private, half readable, and a
    runner under another user could read the manifest but not the tensors it names."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~_umask())


def _place(src: Path, dest: Path) -> None:
    """Copy a cached package into the export folder (a hard link when both are on one file system)."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _preprocessing(bundle: ModelBundle) -> dict:
    h, w = bundle.image_hw
    return {
        "height": h,
        "width": w,
        "channels": bundle.image_channels,
        # What classify does to an image file of exactly this size and mode (8-bit gray for 1 channel,
        # RGB for 3): pixels p in 0..255 become float32(p) / 127.5 - 1. Other sizes are resized
        # (bicubic, cover and centre-crop) by the Python engine only.
        "pixel_scale": 127.5,
        "pixel_offset": -1.0,
        "latent_is_pixels": bundle.latent_shape == (bundle.image_channels, h, w),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_aoti(
    clf,
    out_dir: str | Path,
    batch_sizes: list[int],
    art_dir: Path,
    classes=None,
    noise: torch.Tensor | None = None,
    force: bool = False,
    log=None,
) -> dict:
    """Write the export folder for classifier ``clf``'s model and the class list ``classes``; returns the manifest.

    ``clf`` is a :class:`~diffcls_fast.engine.DiffusionClassifier` (its class spec, condition
    table and calibration are the ones ``classify`` uses). Packages already in ``out_dir`` with
    the same key are reused unless ``force``.
    """

    from ..engine.conditions import check_distinct, encode_conditions, prompt_notices
    from .onnx_export import writable_dir

    bundle = clf.model
    if bundle.prediction_type == "flow":  # the runner builds x_t from alphas_cumprod and reads eps
        what = "the native runner scores the DDPM family only (ε target); flow-matching models run in Python"
        raise UserError(f"{bundle.name}: {what} (classify/eval, any --backend)")
    require_aoti()
    if bundle.network is None:
        raise UserError(f"{bundle.name}: this model has no exportable torch network")
    if bundle.latent_shape != (bundle.image_channels, *bundle.image_hw):
        raise UserError(
            f"{bundle.name}: the native runner supports pixel-space models only (this one encodes images to latents"
            f" {bundle.latent_shape})"
        )
    if bundle.dtype != torch.float32:
        raise UserError(
            f"the AOTInductor export runs in float32 (got --dtype {str(bundle.dtype).removeprefix('torch.')})"
        )
    out = writable_dir(out_dir)
    spec = clf.class_spec(classes)
    cond = encode_conditions(bundle, spec, clf.config.cache)
    check_distinct(spec, cond, prompt_notices(bundle, spec))

    packages = []
    for rng, path, seconds in compile_cached(bundle, art_dir, batch_sizes, force=force):
        dest = out / rng.file_name
        _place(path, dest)
        if log:
            log(
                f"aoti: {dest} [{'cached' if seconds is None else f'compiled in {seconds:.1f} s'}; dynamic batch"
                f" {rng.lo}..{rng.hi}]"
            )
        packages.append(
            {
                "file": rng.file_name,
                "min_batch": rng.lo,
                "max_batch": rng.hi,
                "key": _key(bundle, rng),
                "compile_seconds": seconds,
                "sha256": _sha256(dest),
            }
        )
    for stale in out.glob("denoiser-b*.pt2"):  # packages of another batch range would confuse a reader of the folder
        if stale.name not in {p["file"] for p in packages}:
            stale.unlink()

    acp = bundle.alphas_cumprod.to(torch.float64).cpu()
    save_tensors(
        {
            "alphas_cumprod": acp.contiguous(),
            "sqrt_ab": acp.sqrt().float().contiguous(),
            "sqrt_1mab": (1 - acp).sqrt().float().contiguous(),
        },
        out / "schedule.safetensors",
    )
    cond_cpu = cond.detach().to("cpu")
    cond_cpu = cond_cpu.to(torch.int64) if bundle.cond_kind == "class" else cond_cpu.float()
    save_tensors({"cond": cond_cpu.contiguous()}, out / "conditions.safetensors")
    files = {"schedule": "schedule.safetensors", "conditions": "conditions.safetensors"}
    if noise is not None:
        save_tensors({"noise": torch.as_tensor(noise, dtype=torch.float32).contiguous()}, out / "noise.safetensors")
        files["noise"] = "noise.safetensors"
    elif (out / "noise.safetensors").exists():
        (out / "noise.safetensors").unlink()  # a stale noise file must not be picked up by the runner

    manifest = {
        "format": "diffcls-fast-aoti",
        "version": MANIFEST_VERSION,
        "model": bundle.name,
        "fingerprint": bundle.fingerprint,
        "family": bundle.family,
        "torch": torch.__version__,
        "dtype": "float32",
        "device": bundle.device.type,
        "latent_shape": list(bundle.latent_shape),
        "cond_shape": list(bundle.cond_shape),
        "cond_kind": bundle.cond_kind,
        "num_timesteps": bundle.num_timesteps,
        "prediction_type": bundle.prediction_type,
        "out_channels": raw_out_channels(bundle),
        "batch_sizes": sorted({int(b) for b in batch_sizes}),
        "packages": packages,
        "preprocessing": _preprocessing(bundle),
        "classes": spec.names,
        "prompts": spec.prompts,
        "class_prompts": [[int(i) for i in ids] for ids in spec.class_prompts],
        "calibration": {
            name: {"temperature": float(c["temperature"]), "floor": float(c.get("floor", 0.0))}
            for name, c in (bundle.calibration or {}).items()
        },
        "files": files,
        "sha256": {name: _sha256(out / f) for name, f in files.items()},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def save_pixels(pixels: torch.Tensor, path: str | Path) -> None:
    """Save preprocessed pixels (``[C, H, W]`` or ``[N, C, H, W]`` float32 in [-1, 1]) as the runner's tensor image
    file.

    The file is safetensors with one tensor ``image`` ([C, H, W]) or ``images`` ([N, C, H, W]);
    ``diffcls-run`` reads it without PNG support (see csrc/README.md).
    """

    x = torch.as_tensor(pixels, dtype=torch.float32).contiguous()
    if x.dim() not in (3, 4):
        raise UserError(f"pixels of shape {list(x.shape)}; expected [C, H, W] or [N, C, H, W]")
    save_tensors({"image" if x.dim() == 3 else "images": x}, Path(path))
