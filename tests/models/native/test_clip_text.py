"""The native CLIP text encoder against transformers' CLIPTextModel (last hidden state), on the bundled
weights and on random weights with the bundled configs and others, at odd batch sizes and token counts."""

from __future__ import annotations

import pytest
import torch

from diffcls_fast.models.bundled import BUNDLED
from diffcls_fast.models.native import load_native
from diffcls_fast.models.native.clip_text import CLIPTextModel
from diffcls_fast.models.native.config import Config
from diffcls_fast.models.native.support import clip_text_refusal

from .reference import NATIVE_BUNDLED, assert_close, config, library_text_encoder


def _ids(batch: int, tokens: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", NATIVE_BUNDLED)
def test_the_bundled_weights_give_the_library_output(model):
    folder = BUNDLED[model]
    parts = load_native(folder / "unet", folder / "text_encoder", folder / "tokenizer", torch.float32)
    assert not isinstance(parts, str), parts
    ref = library_text_encoder(folder)
    for batch, tokens in ((1, 16), (3, 16), (10, 16)):
        ids = _ids(batch, tokens, ref.config.vocab_size, seed=batch)
        with torch.no_grad():
            assert_close(parts.text_encoder(ids)[0], ref(ids)[0])


CONFIGS = {
    "bundled-digits": {},
    "wider": {"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 100, "num_hidden_layers": 3},
    "one-head": {"num_attention_heads": 1, "layer_norm_eps": 1e-6, "max_position_embeddings": 40},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_random_weights_at_odd_token_counts(name, shape):
    cfg = {**config("digits", "text_encoder"), **CONFIGS[name]}
    assert clip_text_refusal(cfg) is None
    ref = library_text_encoder(cfg=cfg, seed=len(name))
    net = CLIPTextModel(Config(cfg))
    net.load_state_dict(ref.state_dict(), strict=True)
    ids = _ids(*shape, cfg["vocab_size"])
    with torch.no_grad():
        assert_close(net.eval()(ids)[0], ref(ids)[0])
