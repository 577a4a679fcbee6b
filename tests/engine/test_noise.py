"""Seeds: every bit of the seed counts, seeds below 2**32 keep their streams, bad seeds are user errors."""

import numpy as np
import pytest
import torch

from diffcls_fast.engine.noise import NoiseBank, check_seed, image_key
from diffcls_fast.errors import UserError

KEY = 0x5DEECE66DABCDEF  # a 63-bit image key with both 32-bit halves non-zero


def _noise(seed: int) -> torch.Tensor:
    return NoiseBank((1, 4, 4), seed).noise(KEY, 3)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_seeds_below_2_to_the_32_keep_their_streams(seed):
    # The formula used while the seed was truncated to 32 bits: existing results stay reproducible.
    old = np.random.default_rng([seed & 0xFFFFFFFF, KEY & 0xFFFFFFFF, KEY >> 32, 3, 0]).standard_normal(
        (1, 4, 4), dtype=np.float32
    )
    assert torch.equal(_noise(seed), torch.from_numpy(old))


def test_every_bit_of_a_large_seed_counts():
    seeds = [0, 2**32, 2**32 + 1, 2**64, 2**70, 2**70 + 2**32, 4294967295]
    draws = [_noise(s) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert not torch.equal(draws[i], draws[j]), (seeds[i], seeds[j])
    bank = NoiseBank((1,), 2**70)
    assert bank.uniform(KEY, 0) != NoiseBank((1,), 0).uniform(KEY, 0)


def test_numpy_integers_are_seeds():
    assert check_seed(np.int64(7)) == 7 and type(check_seed(np.uint64(7))) is int


@pytest.mark.parametrize("bad", [-1, -(2**40), 1.5, 0.0, "3", None, True])
def test_bad_seeds_are_user_errors(bad):
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        NoiseBank((1,), bad)


def test_the_image_key_depends_on_pixel_values_not_the_sign_of_zero():
    """-0.0 and 0.0 are the same pixel: the same key, so the same noise and timesteps."""
    x = torch.tensor([[[0.0, 0.5], [-1.0, 0.25]]])
    neg = x.clone()
    neg[0, 0, 0] = -0.0
    assert torch.signbit(neg[0, 0, 0]) and image_key(neg) == image_key(x)
    assert image_key(x) != image_key(x + 1e-7)  # any other value is another image
