"""Native (plain torch) text-to-image parts: the bundled models' denoiser, text encoder and tokenizer
without importing diffusers or transformers, which cost seconds of a one-image ``classify``.

:func:`load_native` builds them only when every config key of the folder is one the native modules
implement (``support``) and each weights file holds exactly their tensors; otherwise it returns why not
and the loader takes the diffusers / transformers path, which stays the reference the native modules are
tested against (tests/models/native/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .clip_text import CLIPTextModel
from .config import Config
from .support import clip_text_refusal, tokenizer_refusal, unet_refusal
from .tokenizer import WordLevelTokenizer
from .unet import UNet2DConditionModel
from .weights import load_into, single_weights_file


@dataclass
class NativeParts:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: WordLevelTokenizer


def _json(p: Path) -> dict | None:
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None  # unreadable: the library path reports it in its own words
    return d if isinstance(d, dict) else None


def load_native(unet_dir: Path, te_dir: Path, tok_dir: Path, dtype: torch.dtype) -> NativeParts | str:
    """The three parts on the CPU in ``dtype``, or one line saying why the native path does not apply."""
    unet_cfg, te_cfg = _json(unet_dir / "config.json"), _json(te_dir / "config.json")
    tok, tok_cfg = _json(tok_dir / "tokenizer.json"), _json(tok_dir / "tokenizer_config.json")
    if unet_cfg is None or te_cfg is None or tok is None or tok_cfg is None:
        return "a config file is missing or not a JSON object"
    why = unet_refusal(unet_cfg) or clip_text_refusal(te_cfg) or tokenizer_refusal(tok, tok_cfg)
    if why:
        return why
    unet_file = single_weights_file(unet_dir, "diffusion_pytorch_model.safetensors")
    te_file = single_weights_file(te_dir, "model.safetensors")
    if unet_file is None or te_file is None:
        return "the weights are not one plain safetensors file per component"
    # Built on the CPU with torch's random init, which the file then replaces: milliseconds at these sizes,
    # where building on the meta device routes every init through torch._refs, which imports torch._dynamo
    # (seconds).
    unet = UNet2DConditionModel(Config(unet_cfg))
    text_encoder = CLIPTextModel(Config(te_cfg))
    why = load_into(unet, unet_file, dtype) or load_into(text_encoder, te_file, dtype, strip_prefix="text_model.")
    if why:
        return why
    return NativeParts(unet, text_encoder, word_level_tokenizer(tok, tok_cfg, tok_dir))


def word_level_tokenizer(tok: dict, tok_cfg: dict, tok_dir: Path) -> WordLevelTokenizer:
    """The native tokenizer of a ``tokenizer.json`` that :func:`tokenizer_refusal` accepted."""
    added = {a["content"]: int(a["id"]) for a in tok.get("added_tokens") or []}
    post = tok["post_processor"]
    single = post["single"]
    at = next(i for i, s in enumerate(single) if "Sequence" in s)

    def ids(items):
        return [int(post["special_tokens"][s["SpecialToken"]["id"]]["ids"][0]) for s in items]

    def library():  # for prompts beyond ASCII only (see tokenizer.py)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)

    return WordLevelTokenizer(
        vocab=dict(tok["model"]["vocab"]),
        unk_token=tok["model"]["unk_token"],
        added=added,
        prefix=ids(single[:at]),
        suffix=ids(single[at + 1 :]),
        pad_id=added[tok_cfg["pad_token"]],
        model_max_length=int(tok_cfg["model_max_length"]),
        fallback=library,
    )
