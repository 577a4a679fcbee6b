"""Intra-op threads for a one-shot ``classify``: one thread for a few images on a small network.

torch starts one intra-op thread per core, and every operator waits for all of them. A one-shot classify
of a few images on a small network (the bundled models: 2.7M parameters, one batch of 256 evaluations
per image) has little work per operator, so extra threads save little on an idle machine (0.25 s of a
4.5 s run, 2 cores), and on a shared one they cost seconds: a thread that the OS has parked holds up
every operator (measured on a loaded 2-core machine: 10.3-10.9 s at 2 threads, 4.7-5.0 s at 1). Large
networks keep torch's default, where each operator has work to share; so do eval and serve, whose
throughput over many images is what threads are for. An ``OMP_NUM_THREADS`` that the user set wins.
"""

from __future__ import annotations

import os

FEW_IMAGES = 8
SMALL_NETWORK = 20_000_000  # parameters


def user_set_threads() -> bool:
    return any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


def one_shot_threads(n_images: int) -> int | None:
    """Before the model loads (its weight casts are operators too): 1 intra-op thread for a run of a few
    images, unless the user chose. Returns the thread count to restore for a large network, or None."""
    if n_images > FEW_IMAGES or user_set_threads():
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return before


def restore_for_large_network(bundle, before: int | None) -> None:
    """Back to torch's default when the loaded network turns out large, or runs off the CPU."""
    if before is None:
        return
    net = bundle.network
    params = sum(p.numel() for p in net.parameters()) if net is not None else 0
    if params >= SMALL_NETWORK or bundle.device.type != "cpu":
        import torch

        torch.set_num_threads(before)
