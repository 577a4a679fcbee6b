"""The papers' reference loop, re-implemented from ../shared/ALGORITHMS.md: the speed baseline.

One image at a time, stage by stage (Li et al.'s adaptive policy), in fixed
batches of 32, eager torch, with the noising and the error as separate torch ops
and a host round trip per batch — the structure of the official evaluation
loop. It uses the engine's noise bank and sample numbering, so it scores the
same (t, eps) pairs and reaches the same labels: every speed-up is quoted at
equal accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffcls_fast.engine.noise import NoiseBank
from diffcls_fast.engine.policies import stage_plan
from diffcls_fast.engine.timesteps import li_grid
from diffcls_fast.models.bundle import ModelBundle


@torch.no_grad()
def reference_classify(
    model: ModelBundle,
    x0: torch.Tensor,
    cond: torch.Tensor,
    n_samples: list[int],
    to_keep: list[int],
    key: int,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[int, int]:
    """(label, evaluations) for one image latent ``x0`` [C, H, W] and a condition table [K, ...].

    ``key`` is the engine's noise key of the image (``image_key`` of its input pixels).
    """
    T = model.num_timesteps
    n_classes = cond.shape[0]
    bank = NoiseBank(model.latent_shape, seed)
    grid = li_grid(T, max(n_samples))
    acp = model.alphas_cumprod.to(model.device, torch.float32)
    errors: dict[int, list[float]] = {c: [] for c in range(n_classes)}
    alive = list(range(n_classes))
    sample0, evals = 0, 0
    for idx, keep in stage_plan(T, n_samples, to_keep, n_classes):
        ts = [int(grid[i]) for i in idx]
        samples = list(range(sample0, sample0 + len(idx)))
        sample0 += len(idx)
        noise = {s: bank.noise(key, s).to(model.device) for s in samples}
        # every (class, t) pair of the stage, in batches of batch_size
        pairs = [(c, s, t) for c in alive for s, t in zip(samples, ts)]
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            cls = torch.tensor([c for c, _, _ in chunk], device=model.device)
            t = torch.tensor([t for _, _, t in chunk], device=model.device)
            eps = torch.stack([noise[s] for _, s, _ in chunk])
            a = acp[t].sqrt().view(-1, 1, 1, 1)
            b = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
            x_t = (a * x0.unsqueeze(0) + b * eps).to(model.dtype)
            eps_hat = model.denoise(x_t, t, cond[cls])
            err = F.mse_loss(eps_hat.float(), eps, reduction="none").mean(dim=(1, 2, 3)).cpu()
            for (c, _, _), e in zip(chunk, err.tolist()):
                errors[c].append(e)
            evals += len(chunk)
        means = np.array([np.mean(errors[c]) for c in alive])
        alive = [alive[j] for j in np.argsort(means, kind="stable")[:keep]]
        if len(alive) == 1:
            break
    return alive[0], evals
