"""Flow matching (rectified flow: SD3/SD3.5, Flux): the σ table of a ``FlowMatchEulerDiscreteScheduler`` config.

A rectified-flow model is trained on x_t = (1 - σ) x0 + σ ε and predicts the velocity ε - x0. The engine keeps
its integer timestep indices t in [0, T): index t stands for σ = shift((t + 1) / T), the same shifted σ the
scheduler's training table holds (diffusers builds it from t = 1..T, high to low; this table is that list
ascending, so a larger index is noisier, as with DDPM). Every timestep policy, order and band therefore runs
over the model's own shifted σ schedule, monotone in σ.

The noising coefficients are a = 1 - σ, b = σ (``ModelBundle.noise_coefficients``); the engine's
``alphas_cumprod`` of a flow model is the DDPM schedule with the same signal-to-noise ratio,
a² / (a² + b²), for anything that reads SNR from it.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")

# options that change only the inference sampler's step list, never the training σ distribution
_SAMPLER_ONLY = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling")


def is_flow_config(cfg: dict) -> bool:
    return "FlowMatch" in str(cfg.get("_class_name", ""))


def flow_sigmas(cfg: dict, image_seq_len: int | None = None) -> torch.Tensor:
    """σ per timestep index (float64 [T], ascending, on the CPU) of a flow-matching scheduler config.

    ``shift`` (SD3: 3.0) maps s to shift * s / (1 + (shift - 1) s). With ``use_dynamic_shifting`` (Flux) the
    shift depends on the image's token count ``image_seq_len`` (its packed latent length), as the Flux pipeline
    computes it: mu interpolated linearly between base_shift at base_image_seq_len and max_shift at
    max_image_seq_len, then σ = e^mu / (e^mu + (1/s - 1)) (or mu / (mu + (1/s - 1)) for time_shift_type
    "linear").
    """
    cls = str(cfg.get("_class_name", ""))
    if cls not in FLOW_SCHEDULERS:
        raise UserError(f"scheduler {cls or '(no _class_name)'}: not a flow-matching scheduler")
    if cfg.get("invert_sigmas"):
        raise UserError(f"scheduler {cls}: invert_sigmas is not supported (σ must grow with the timestep)")
    if cfg.get("shift_terminal") is not None:
        raise UserError(f"scheduler {cls}: shift_terminal is not supported (an inference-only stretch of σ)")
    try:
        T = int(cfg.get("num_train_timesteps", 1000))
        shift = float(cfg.get("shift", 1.0))
    except (TypeError, ValueError):
        raise UserError(f"scheduler {cls}: num_train_timesteps and shift must be numbers") from None
    if T < 2 or not shift > 0:
        raise UserError(f"scheduler {cls}: needs num_train_timesteps >= 2 and shift > 0, got {T} and {shift}")
    s = torch.arange(1, T + 1, dtype=torch.float64) / T
    if cfg.get("use_dynamic_shifting"):
        if image_seq_len is None:
            raise UserError(f"scheduler {cls}: use_dynamic_shifting needs the image's token count")
        # the pipeline's defaults only where the config sets none: a configured 0 is a shift of 0, not the default
        base, top = (float(d if cfg.get(k) is None else cfg[k]) for k, d in (("base_shift", 0.5), ("max_shift", 1.15)))
        lo, hi = int(cfg.get("base_image_seq_len", 256)), int(cfg.get("max_image_seq_len", 4096))
        mu = base + (top - base) * (image_seq_len - lo) / (hi - lo)
        m = math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else mu
        sig = torch.where(s < 1, m / (m + (1 / s - 1)), torch.ones_like(s))
    else:
        sig = shift * s / (1 + (shift - 1) * s)
    return sig


def snr_alphas_cumprod(sigmas: torch.Tensor) -> torch.Tensor:
    """The DDPM ᾱ with the same signal-to-noise ratio as x_t = (1 - σ) x0 + σ ε: (1-σ)² / ((1-σ)² + σ²)."""
    a, b = 1 - sigmas, sigmas
    return (a * a / (a * a + b * b)).double()
