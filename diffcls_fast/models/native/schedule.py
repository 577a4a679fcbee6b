"""The training noise schedule of a DDPM-family scheduler config, without importing diffusers' scheduler
classes (``import diffusers`` alone costs seconds).

Covers the beta schedules the project's models use (linear, scaled_linear, squaredcos_cap_v2) with the
same float32 arithmetic as ``diffusers.DDPMScheduler.__init__``, so the cumulative products are bit-identical
(tests/models/native/test_schedule.py); any other config returns None and the caller builds diffusers'
scheduler, the reference.
"""

from __future__ import annotations

import math

import torch

# DDPMScheduler's defaults, for a config that leaves a key out
_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def native_alphas_cumprod(cfg: dict) -> torch.Tensor | None:
    """float32 ``alphas_cumprod`` for the schedules covered here, else None."""
    c = {**_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    n, start, end, kind = c["num_train_timesteps"], c["beta_start"], c["beta_end"], c["beta_schedule"]
    if cfg.get("trained_betas") is not None or cfg.get("rescale_betas_zero_snr"):
        return None
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0 and _number(start) and _number(end)):
        return None
    if kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = torch.tensor([min(1 - _cosine(i + 1, n) / _cosine(i, n), 0.999) for i in range(n)], dtype=torch.float32)
    else:
        return None
    return torch.cumprod(1.0 - betas, dim=0)


def _cosine(i: int, n: int) -> float:
    """Glide's alpha-bar at step i of n (diffusers' betas_for_alpha_bar, "cosine")."""
    return math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2
