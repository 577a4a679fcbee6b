"""Sharded evaluation (torchrun / SLURM convention): ``eval --shard I/N``, or RANK/WORLD_SIZE from torchrun.

Shard ``I`` of ``N`` (0-based, as torchrun's ``RANK``) takes the interleaved slice
``positions[I::N]`` of the run's images (the split after ``--limit``), so every
shard gets an even mix of the split whatever its order. Each shard writes its
own resumable ``--out`` part, ``OUT.shard-I-of-N.jsonl``; ``diffcls-fast merge``
joins the parts (:mod:`diffcls_fast.merge`). An image's result is a pure
function of (seed, image, classes, options), so the merged rows equal a
single-process run's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class ShardSpec:
    index: int  # 0-based, < count
    count: int  # >= 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, positions: Sequence[int]) -> list[int]:
        """This shard's interleaved slice of ``positions``."""
        return list(positions)[self.index :: self.count]

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def part_path(self, out: str | Path) -> Path:
        """``results.jsonl`` -> ``results.shard-0-of-3.jsonl`` (a name without a suffix gets ``.shard-0-of-3``)."""
        p = Path(out)
        return p.with_name(f"{p.stem}.shard-{self.index}-of-{self.count}{p.suffix}")


def parse_shard(text: str) -> ShardSpec:
    """``"I/N"`` (0 <= I < N) as a :class:`ShardSpec`; anything else is a one-line :class:`UserError`."""
    m = _SPEC.match(str(text))
    if not m:
        raise UserError(
            f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4 (shards are numbered from 0, as"
            " torchrun's RANK)"
        )
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise UserError(
            f"--shard {text}: need 0 <= I < N and N >= 1 (shards are numbered from 0, so the last of 4 is 3/4)"
        )
    return ShardSpec(i, n)


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[ShardSpec, int | None] | None:
    """(shard, local rank) when launched by torchrun (``RANK`` and ``WORLD_SIZE`` set), else None."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").strip() else None
    except ValueError:
        raise UserError(
            f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}:"
            " expected integers (as torchrun sets them)"
        ) from None
    if world < 1 or not 0 <= rank < world or (local is not None and local < 0):
        raise UserError(f"RANK={rank}, WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    if world == 1:  # one process (torchrun --nproc-per-node 1, or a launcher that always sets these): not sharded
        return None
    return ShardSpec(rank, world), local


def resolve_shard(
    shard_arg: str | None, device: str | None, env: Mapping[str, str] | None = None
) -> tuple[ShardSpec | None, str | None]:
    """The shard of this process and the device to use.

    ``--shard`` wins; it must agree with torchrun's RANK/WORLD_SIZE when both are given.
    Under torchrun without ``--device``, rank r uses ``cuda:LOCAL_RANK`` when CUDA is
    available (one GPU per rank), else the CPU.
    """
    spec = parse_shard(shard_arg) if shard_arg is not None else None
    launched = shard_from_env(env)
    if launched is None:
        return spec, device
    env_spec, local = launched
    if spec is not None and spec != env_spec:
        raise UserError(
            f"--shard {spec} disagrees with torchrun's RANK/WORLD_SIZE {env_spec}; drop --shard under torchrun"
        )
    if device is None and local is not None:
        import torch

        if torch.cuda.is_available():
            if local >= torch.cuda.device_count():
                raise UserError(
                    f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA devices; start at most"
                    " that many processes per node"
                )
            device = f"cuda:{local}"
    return env_spec, device


def apply_scale_out(a) -> None:
    """``eval``'s --shard / torchrun / --ray options, checked and applied to ``a`` before anything loads.

    Sets ``a.shard_spec`` (None when not sharded), ``a.device`` (cuda:LOCAL_RANK under
    torchrun) and, for a shard, ``a.out`` to its part file ``OUT.shard-I-of-N.jsonl``.
    """
    use_ray = bool(getattr(a, "ray", False))
    if not use_ray:
        for opt in ("ray_address", "ray_workers", "ray_gpus", "ray_cpus", "ray_max_restarts"):
            if getattr(a, opt, None) is not None:
                raise UserError(f"--{opt.replace('_', '-')} needs --ray")
    spec, device = (
        (parse_shard(a.shard) if a.shard is not None else None, a.device)
        if use_ray
        else resolve_shard(a.shard, a.device)
    )
    a.shard_spec = None
    if use_ray:
        if shard_from_env() is not None:
            raise UserError(
                "--ray under torchrun (RANK/WORLD_SIZE set): every rank would run the whole Ray eval; start one driver"
                " without torchrun"
            )
        if spec is not None:
            raise UserError("--ray and --shard do not combine: Ray spreads the images over its workers itself")
        if a.ray_workers is None:
            a.ray_workers = 1
        if a.ray_cpus is None:
            a.ray_cpus = 1.0
        if a.ray_gpus is not None and a.ray_gpus < 0 or a.ray_cpus <= 0:
            raise UserError(f"--ray-gpus must be >= 0 and --ray-cpus > 0, got {a.ray_gpus}, {a.ray_cpus}")
    if getattr(a, "task", "classify") != "classify" and (spec is not None or use_ray):
        raise UserError("--shard, torchrun and --ray are for --task classify")
    if spec is None:
        return
    if not a.out:
        raise UserError(
            f"shard {spec} needs --out: each shard writes its part (OUT.shard-I-of-N.jsonl); join them with"
            " diffcls-fast merge"
        )
    out = Path(a.out)
    if not out.name.endswith(f".shard-{spec.index}-of-{spec.count}{out.suffix}"):
        a.out = str(spec.part_path(out))
    a.shard_spec, a.device = spec, device
