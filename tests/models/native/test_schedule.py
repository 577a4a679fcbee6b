"""The noise schedule computed without diffusers is diffusers' DDPMScheduler.alphas_cumprod, bit for bit."""

from __future__ import annotations

import pytest
import torch

from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.common import alphas_cumprod_from_config, scheduler_config
from diffcls_fast.models.native.schedule import native_alphas_cumprod

COVERED = [
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 37},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "linear", "num_train_timesteps": 4000, "beta_start": 1e-5, "beta_end": 0.05},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "scaled_linear", "num_train_timesteps": 1, "beta_start": 0.00085, "beta_end": 0.012},
    {},  # every key left to DDPMScheduler's defaults
    {"beta_schedule": "linear", "beta_start": 0, "beta_end": 1},
]


@pytest.mark.parametrize("cfg", COVERED, ids=lambda c: "-".join(f"{v}" for v in c.values()) or "defaults")
def test_bit_identical_to_diffusers(cfg):
    from diffusers import DDPMScheduler

    got = native_alphas_cumprod({"_class_name": "DDPMScheduler", **cfg})
    assert got is not None
    assert torch.equal(got, DDPMScheduler(**cfg).alphas_cumprod)


@pytest.mark.parametrize("model", ["digits", "numbers"])
def test_the_bundled_schedules_are_covered(model):
    from diffusers import DDPMScheduler

    sched = scheduler_config(BUNDLED[model])
    got = native_alphas_cumprod(sched)
    assert got is not None
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    assert torch.equal(got, DDPMScheduler(**{k: sched[k] for k in keys}).alphas_cumprod)


NOT_COVERED = [
    {"beta_schedule": "sigmoid"},
    {"beta_schedule": "laplace"},
    {"trained_betas": [0.1, 0.2]},
    {"rescale_betas_zero_snr": True},
    {"num_train_timesteps": 0},
    {"num_train_timesteps": True},
    {"beta_start": "0.1"},
]


@pytest.mark.parametrize("cfg", NOT_COVERED, ids=lambda c: "-".join(f"{k}" for k in c))
def test_other_schedules_are_left_to_diffusers(cfg):
    assert native_alphas_cumprod(cfg) is None


def test_a_schedule_left_to_diffusers_still_loads_through_it():
    from diffusers import DDPMScheduler

    cfg = {"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid", "num_train_timesteps": 50}
    want = DDPMScheduler(beta_schedule="sigmoid", num_train_timesteps=50).alphas_cumprod.double()
    assert torch.equal(alphas_cumprod_from_config(cfg), want)
