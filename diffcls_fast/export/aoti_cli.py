"""``diffcls-fast export --format aoti``: the command-line side of :mod:`.aoti_export`."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..errors import UserError


def cmd_export_aoti(a: argparse.Namespace, sizes: list[int]) -> int:
    from ..engine import DiffusionClassifier, parse_class_list, read_prompts_csv
    from ..engine.noise import check_seed, load_noise_file
    from ..models import load_model
    from ..models.common import resolve_device
    from .aoti_export import MAX_BATCH, MIN_BATCH, export_aoti, require_aoti
    from .backends import artifact_dir
    from .onnx_export import writable_dir

    # Everything that needs no model is checked first.
    if a.classes is not None and a.prompts is not None:
        raise UserError("give --classes or --prompts, not both")
    if a.prompts:
        classes = read_prompts_csv(a.prompts)
    elif a.classes is not None:
        parse_class_list(a.classes)
        classes = a.classes
    else:
        classes = None
    seed = check_seed(a.seed)
    if a.noise_path is None and seed >= 2**64:  # the engine's own noise takes any seed; torch.Generator does not
        raise UserError(f"--seed {seed}: the exported noise is drawn by torch.Generator, which takes seeds below 2**64")
    noise = load_noise_file(a.noise_path)[0] if a.noise_path else None
    if resolve_device(a.device).type != "cpu":
        raise UserError("--format aoti exports for the CPU (the native runner's device); use --device cpu")
    if a.dtype not in ("auto", "fp32", "float32"):
        raise UserError(f"--format aoti exports float32 (got --dtype {a.dtype})")
    if sizes[-1] > MAX_BATCH:
        raise UserError(
            f"--batch-sizes {sizes[-1]}: --format aoti compiles batches up to {MAX_BATCH} (the native runner runs on"
            " a CPU, where larger batches gain nothing); give smaller sizes"
        )
    if sizes[0] < MIN_BATCH:
        # not silent: the package's range says 2.., which would otherwise look like --batch-sizes was ignored
        print(
            f"note: --batch-sizes {sizes[0]}: a batch of 1 runs padded to {MIN_BATCH} (torch.export fixes a size-1"
            " axis, so packages start at 2)",
            file=sys.stderr,
        )
    require_aoti()
    writable_dir(a.out)
    art_dir = writable_dir(artifact_dir(a.cache_dir))

    t0 = time.perf_counter()
    model = load_model(a.model, device="cpu", dtype="fp32")
    if model.random_weights:
        print(f"note: {model.describe()}", file=sys.stderr)
    clf = DiffusionClassifier(model, "ttest", seed=seed, cache_dir=a.cache_dir)
    if noise is None:
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(a.noise_rows, *model.latent_shape, generator=g)
    manifest = export_aoti(clf, a.out, sizes, art_dir, classes=classes, noise=noise, force=a.force, log=print)
    print(
        f"aoti: {a.out}/manifest.json [{manifest['model']}, {len(manifest['classes'])} classes,"
        f" {len(manifest['prompts'])} prompts, noise {tuple(noise.shape)}, packages"
        f" {', '.join(p['file'] for p in manifest['packages'])}] in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"run it: diffcls-run {a.out} IMAGE...   (the same in Python: diffcls-fast classify IMAGE... --noise-path"
        f" {a.out}/noise.safetensors)"
    )
    return 0
