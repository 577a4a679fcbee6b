"""The command line's engine and policy options, shared by ``diffcls-fast`` and its server client.

Imports no torch (``diffcls-fast --help`` and ``classify --server`` stay light). The
policy flags are derived from the policies' own declarations
(:data:`diffcls_fast.engine.policies.REGISTRY`): a policy's options appear here, in the
server's request fields and in the docs without being written again.
"""

from __future__ import annotations

import argparse
import warnings

from .engine.policies import OPTIONS, OWNER, POLICIES, POLICY_OPTIONS, REGISTRY
from .engine.policies.options import positive_float, positive_int
from .errors import DiffclsWarning

# Engine-wide settings: one per engine (a server has its own), unlike the policy, its options,
# the seed and the temperature, which every request may set. classify --server sends the
# per-request options that were typed (the others are the server's defaults), sends --model and
# --loss for the server to check, and refuses the other engine settings (they would be ignored).
ENGINE_WIDE = (
    "model",
    "batch_size",
    "max_inflight",
    "loss",
    "speculate",
    "overlap",
    "backend",
    "xformers",
    "device",
    "dtype",
    "cache_dir",
    "no_cache",
    "noise_path",
)
BACKENDS = ("torch", "compile", "onnx", "tensorrt", "aoti")
MODEL_HELP = (
    "bundled model name (digits, numbers, fashion, numbers3, numbers-flow), preset:NAME, or a local diffusers folder"
    " (default: digits)"
)


class Given(argparse.Action):
    """A store action that also records that the option was on the command line (``namespace.given``):
    ``classify --server`` must tell an option the user set from its default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        given = getattr(namespace, "given", None) or set()
        namespace.given = given | {self.dest}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The engine's flags, the request flags (policy, seed, temperature) and every policy's options."""
    g = p.add_argument_group("engine")
    p.set_defaults(given=set())
    add = g.add_argument
    add("--model", action=Given, default="digits", help=MODEL_HELP)
    add(
        "--policy", action=Given, default="ttest", choices=list(POLICIES), help="classification policy (default: ttest)"
    )
    add("--seed", action=Given, type=int, default=0, help="noise seed (default: 0)")
    add(
        "--batch-size",
        action=Given,
        type=positive_int,
        default=256,
        help="largest denoiser batch; buckets are powers of two up to it (default: 256)",
    )
    add("--max-inflight", action=Given, type=positive_int, default=64, help="images scored concurrently (default: 64)")
    add(
        "--loss",
        action=Given,
        default="l2",
        choices=["l2", "l1", "huber", "x0"],
        help="error: eps l2/l1/huber, or Clark & Jaini's weighted x0 error (default: l2)",
    )
    add(
        "--temperature",
        action=Given,
        type=positive_float,
        default=None,
        help="posterior softmax temperature (default: the model's)",
    )
    add(
        "--abstain-ood",
        action=Given,
        nargs=0,
        default=False,
        help="answer no label for an image the model's out-of-distribution rule flags (default: flag it, answer)",
    )
    add(
        "--speculate",
        action=Given,
        default="auto",
        choices=["auto", "none", "pad", "fill"],
        help="score ahead when in-flight images cannot fill a batch: fill (=auto), pad, none",
    )
    add(
        "--overlap",
        action=Given,
        default="auto",
        choices=["auto", "on", "off"],
        help="prepare the next batch while the device runs this one: auto (on for CUDA), on, off",
    )
    add(
        "--backend",
        action=Given,
        default="torch",
        choices=list(BACKENDS),
        help="denoiser runtime (default: torch, eager)",
    )
    add(
        "--xformers",
        action=Given,
        nargs=0,
        default=False,
        help="xformers memory-efficient attention (torch/compile backends, CUDA)",
    )
    add("--device", action=Given, default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    add("--dtype", action=Given, default="auto", help="fp32, fp16, bf16 or auto (fp16 on CUDA, fp32 on CPU)")
    add(
        "--cache-dir",
        action=Given,
        default=None,
        help="embedding cache folder (default: $DIFFCLS_CACHE_DIR or ~/.cache/diffcls-fast)",
    )
    add("--no-cache", action=Given, nargs=0, default=False, help="do not read or write the embedding cache")
    add(
        "--noise-path",
        action=Given,
        default=None,
        help="a saved noise tensor [N,C,H,W] (safetensors, key 'noise'); sample i uses row i",
    )
    g = p.add_argument_group("policy options")
    for spec in REGISTRY.values():
        for o in spec.options:
            kw = {"nargs": o.nargs} if o.nargs is not None else {}
            if o.parse is not None:
                kw["type"] = o.parse
            if o.choices is not None:
                kw["choices"] = list(o.choices)
            if o.metavar is not None:
                kw["metavar"] = o.metavar
            help_text = f"{spec.name}: {o.help} (default: {o.default_text()})"
            g.add_argument(o.flag, action=Given, default=o.default_value(), help=help_text, **kw)


def policy_options(a: argparse.Namespace) -> dict:
    """Every policy option's value on the command line (typed or default)."""
    return {name: getattr(a, name) for name in OPTIONS}


def warn_unread_policy_options(a: argparse.Namespace) -> None:
    """A typed option that the chosen policy does not read changes nothing: say so (a warning,
    not an error, so that one command line can sweep --policy over a fixed set of options)."""
    given = getattr(a, "given", ())
    unread = [o for o in OPTIONS if o in given and o not in POLICY_OPTIONS.get(a.policy, ())]
    if unread:
        names = ", ".join(f"{OPTIONS[o].flag} ({OWNER[o]})" for o in unread)
        warnings.warn(f"--policy {a.policy} does not read {names}; they change nothing", DiffclsWarning, stacklevel=2)
