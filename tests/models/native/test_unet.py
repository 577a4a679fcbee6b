"""The native UNet against diffusers' UNet2DConditionModel: the bundled weights, and random weights on the
bundled configs and on other configs the native module accepts, at odd batch sizes, token counts and
sample sizes (not a multiple of the upsampling factor: the skip sizes go to the upsamplers)."""

from __future__ import annotations

import pytest
import torch

from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.native import load_native
from diffcls_fast.models.native.config import Config
from diffcls_fast.models.native.support import unet_refusal
from diffcls_fast.models.native.unet import UNet2DConditionModel

from .reference import NATIVE_BUNDLED, assert_close, config, library_unet


def _inputs(batch: int, hw: tuple[int, int], channels: int, tokens: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *hw, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, tokens, dim, generator=g)
    return x, t, cond


def _native_from(ref) -> UNet2DConditionModel:
    net = UNet2DConditionModel(Config(dict(ref.config)))
    net.load_state_dict(ref.state_dict(), strict=True)
    return net.eval()


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_the_bundled_weights_give_the_library_output(model, batch):
    folder = BUNDLED[model]
    parts = load_native(folder / "unet", folder / "text_encoder", folder / "tokenizer", torch.float32)
    assert not isinstance(parts, str), parts
    ref = library_unet(folder)
    cfg = ref.config
    hw = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    x, t, cond = _inputs(batch, hw, cfg.in_channels, 16, cfg.cross_attention_dim, seed=batch)
    with torch.no_grad():
        assert_close(parts.unet(x, t, encoder_hidden_states=cond).sample, ref(x, t, encoder_hidden_states=cond).sample)


# (batch, height, width, tokens): odd batches and token counts; 6x10 and 5x7 are not multiples of 4
SHAPES = [(1, 8, 8, 16), (3, 8, 16, 7), (2, 6, 10, 1), (3, 5, 7, 33)]


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_weights_on_the_bundled_configs(model, shape):
    cfg = config(model, "unet")
    ref = library_unet(cfg=cfg, seed=sum(shape))
    net = _native_from(ref)
    batch, h, w, tokens = shape
    x, t, cond = _inputs(batch, (h, w), cfg["in_channels"], tokens, cfg["cross_attention_dim"])
    with torch.no_grad():
        assert_close(net(x, t, encoder_hidden_states=cond).sample, ref(x, t, encoder_hidden_states=cond).sample)


# other configs inside what the native module accepts: block mixes, per-block head counts, deeper blocks
VARIANTS = {
    "two-blocks-rgb": {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [16, 32],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": [2, 4],
        "norm_num_groups": 8,
        "cross_attention_dim": 24,
    },
    "deeper": {"layers_per_block": 2, "transformer_layers_per_block": 2, "norm_eps": 1e-6},
    "all-attention": {
        "down_block_types": ["CrossAttnDownBlock2D"] * 3,
        "up_block_types": ["CrossAttnUpBlock2D"] * 3,
        "attention_head_dim": 4,
    },
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_random_weights_on_other_accepted_configs(name):
    cfg = {**config("digits", "unet"), **VARIANTS[name]}
    assert unet_refusal(cfg) is None
    ref = library_unet(cfg=cfg, seed=1)
    net = _native_from(ref)
    for batch, h, w, tokens in SHAPES[:3]:
        x, t, cond = _inputs(batch, (h, w), cfg["in_channels"], tokens, cfg["cross_attention_dim"], seed=batch)
        with torch.no_grad():
            assert_close(net(x, t, encoder_hidden_states=cond).sample, ref(x, t, encoder_hidden_states=cond).sample)


def test_a_scalar_or_python_timestep_is_broadcast_as_diffusers_does():
    cfg = config("digits", "unet")
    ref = library_unet(cfg=cfg, seed=2)
    net = _native_from(ref)
    x, _, cond = _inputs(3, (8, 8), 1, 16, 64)
    with torch.no_grad():
        for t in (torch.tensor(417), 417, 417.5):
            assert_close(net(x, t, encoder_hidden_states=cond).sample, ref(x, t, encoder_hidden_states=cond).sample)


def test_bfloat16_follows_the_library_loosely():
    """Not bit-identical in bf16 (the library's kernels may order reductions differently) but close."""
    cfg = config("digits", "unet")
    ref = library_unet(cfg=cfg, seed=3)
    net = _native_from(ref)
    ref, net = ref.to(torch.bfloat16), net.to(torch.bfloat16)
    x, t, cond = (a.to(torch.bfloat16) if a.is_floating_point() else a for a in _inputs(2, (8, 8), 1, 16, 64))
    with torch.no_grad():
        a = net(x, t, encoder_hidden_states=cond).sample.float()
        b = ref(x, t, encoder_hidden_states=cond).sample.float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()
