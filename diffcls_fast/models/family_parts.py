"""What the SDXL, SD3, PixArt and Flux loaders share: their text encoders and tokenizers, their VAE, and the checks
that the pieces of a folder fit each other, each refusal one line naming the component.

How prompts become token states follows each family's diffusers pipeline:

* CLIP (SDXL, SD3): the penultimate hidden state ``hidden_states[-2]`` (the pipelines' default, clip_skip unset),
  fixed length, no attention mask; the pooled vector is ``text_embeds`` of a ``CLIPTextModelWithProjection``
  (its projected end-of-text state) or ``pooler_output`` of a ``CLIPTextModel`` (Flux).
* T5 (SD3, PixArt, Flux): the last hidden state, fixed length; PixArt also passes the padding mask to both T5 and
  the transformer, SD3 and Flux neither, and lower-cases the prompt first (its pipelines do, the others not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..images import as_hw
from .common import load_weights, need_component, quiet_loading, read_json, vae_dtype, vae_resolution

_ROLES = {
    "unet": "the denoiser",
    "transformer": "the denoiser",
    "vae": "the autoencoder",
    "scheduler": "the noise schedule",
}


def check_layout(folder: Path, family: str, components: dict[str, str]) -> None:
    """Every folder of the family's layout ({folder: what it holds}) is there: the first missing one in one line,
    with the whole layout (need_component's message names Stable Diffusion's)."""
    for sub, what in components.items():
        if not (folder / sub).is_dir():
            layout = ", ".join(f"{c}/" for c in components)
            role = what or _ROLES.get(sub, sub)
            raise UserError(f"{folder}: missing {sub}/ ({role}); {family} folders have {layout}")


def load_tokenizer(folder: Path, sub: str):
    tok_dir = need_component(folder, sub, f"the tokenizer ({sub})")
    from transformers import AutoTokenizer

    try:
        with quiet_loading():
            return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:  # a broken tokenizer folder: OSError, ValueError, JSON errors, ...
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{tok_dir}: cannot load the tokenizer ({first})") from None


def load_text_encoder(folder: Path, sub: str, allowed: Sequence[str], dtype: torch.dtype):
    """The transformers encoder in ``folder/sub``: its config's architecture, which must be one of ``allowed``."""
    te_dir = need_component(folder, sub, f"a text encoder ({allowed[0]})")
    import transformers

    archs = read_json(te_dir / "config.json").get("architectures") or [allowed[0]]
    name = archs[0] if isinstance(archs, list) and isinstance(archs[0], str) else None
    if name not in allowed:
        raise UserError(f"{te_dir}: architectures {archs!r}; this family needs {' or '.join(allowed)} here")
    with quiet_loading():
        return load_weights(getattr(transformers, name), te_dir, f"the text encoder ({sub})", torch_dtype=dtype)


def load_vae(folder: Path, dtype: torch.dtype, latent_channels: int):
    """``vae/`` as an ``AutoencoderKL``, refused unless it makes the latent channels the denoiser takes."""
    from diffusers import AutoencoderKL

    vae_dir = need_component(folder, "vae", "the autoencoder")
    vae_dt = vae_dtype(vae_dir, dtype)
    with quiet_loading():
        vae = load_weights(AutoencoderKL, vae_dir, "the autoencoder", low_cpu_mem_usage=False, torch_dtype=vae_dt)
    to_dtype(vae, vae_dt)
    if int(vae.config.latent_channels) != latent_channels:
        what = f"vae has {vae.config.latent_channels} latent channels but the denoiser takes {latent_channels}"
        raise UserError(f"{folder}: {what}")
    return vae


def to_dtype(model, dtype: torch.dtype):
    """``model`` in ``dtype``: without accelerate (low_cpu_mem_usage=False) diffusers 0.42 leaves some classes
    (SD3's transformer) in float32 whatever ``torch_dtype`` says, and a bf16 input then fails in the first conv."""
    if any(p.dtype != dtype for p in model.parameters()):
        with quiet_loading():  # diffusers logs advice about casting with .to()
            model.to(dtype)
    return model


def load_denoiser(cls, folder: Path, sub: str, dtype: torch.dtype):
    d = need_component(folder, sub, f"the denoiser ({cls.__name__})")
    cfg_cls = read_json(d / "config.json").get("_class_name")
    if cfg_cls != cls.__name__:
        raise UserError(f"{d}: config.json names {cfg_cls!r}; this family needs {cls.__name__}")
    with quiet_loading():
        net = load_weights(cls, d, f"the denoiser ({sub})", low_cpu_mem_usage=False, torch_dtype=dtype)
    return to_dtype(net, dtype)


def check_vocab(folder: Path, sub: str, tokenizer, encoder) -> None:
    if len(tokenizer) > int(encoder.config.vocab_size):
        what = f"has {len(tokenizer)} tokens but its text encoder only {encoder.config.vocab_size} embeddings"
        raise UserError(f"{folder}/{sub}: the tokenizer {what}; they are not a pair")


def check_dim(folder: Path, what: str, got: int, want: int, of: str) -> None:
    if int(got) != int(want):
        raise UserError(f"{folder}: {what} is {got} but {of} is {want}; they must be the same")


def token_limit(tokenizer, encoder, cap: int | None = None) -> int:
    """What both the tokenizer and the encoder accept (T5's relative positions have no limit: its tokenizer's),
    at most ``cap`` (the family's trained length)."""
    limit = int(tokenizer.model_max_length)
    pos = getattr(encoder.config, "max_position_embeddings", None)
    if pos:
        limit = min(limit, int(pos))
    return min(limit, cap) if cap else limit


def clip_states(tokenizer, encoder, prompts: Sequence[str], max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, max_len, D] penultimate hidden states, [N, P] pooled) of a CLIP text encoder."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    out = encoder(input_ids=ids.input_ids.to(device), output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return out.hidden_states[-2], pooled


def t5_states(
    tokenizer, encoder, prompts: Sequence[str], max_len: int, device, masked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, max_len, D] last hidden states, [N, max_len] attention mask) of a T5 encoder."""
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    mask = enc.attention_mask.to(device)
    states = encoder(input_ids=enc.input_ids.to(device), attention_mask=mask if masked else None).last_hidden_state
    return states, mask


def in_chunks(encode: Callable[[list[str]], torch.Tensor], prompts: Sequence[str], dtype) -> torch.Tensor:
    """``encode`` over chunks of 64 prompts (bounded memory for thousands of classes), concatenated."""
    prompts = list(prompts)
    with torch.no_grad():
        return torch.cat([encode(prompts[i : i + 64]) for i in range(0, len(prompts), 64)]).to(dtype)


def long_prompt_finder(
    encoders: Sequence[tuple[str, object, int]],
    prepare: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[Sequence[str]], list[tuple[int, int, tuple[tuple[str, int, int], ...]]]]:
    """``long_prompts(prompts)`` for a family with several text encoders: ``encoders`` is ``(name, tokenizer,
    token limit)`` for each kind (CLIP, T5), shortest limit first. Returns, for each prompt some encoder cuts,
    ``(prompt index, its token count under the first encoder that cuts it, ((name, limit, count), ...) of every
    encoder that cuts it)``; the engine's notice says which encoders see the prompt whole (SD3's T5 reads 256
    tokens where its CLIP encoders read 77). ``prepare``: what the family's encoder does to the prompts before
    tokenizing them (PixArt lower-cases them), so the counts are of the tokens it reads."""
    encoders = list(encoders)

    def long_prompts(prompts: Sequence[str]) -> list[tuple[int, int, tuple[tuple[str, int, int], ...]]]:
        prompts = prepare(list(prompts)) if prepare else list(prompts)
        counts = [
            [len(ids) for ids in tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
            for _, tokenizer, _ in encoders
        ]
        out = []
        for i in range(len(prompts)):
            cut = tuple(
                (name, limit, counts[k][i]) for k, (name, _, limit) in enumerate(encoders) if counts[k][i] > limit
            )
            if cut:
                out.append((i, cut[0][2], cut))
        return out

    long_prompts.encoders = tuple((name, limit) for name, _, limit in encoders)  # the notice names the others
    return long_prompts


def latent_geometry(vae, latent_hw) -> tuple[tuple[int, int], int | tuple[int, int]]:
    """(latent (h, w), pixel resolution) for a latent size."""
    hw = as_hw(latent_hw)
    return hw, vae_resolution(vae, hw)


def meta_number(folder: Path, meta: dict, key: str, default, kind=int, minimum=2):
    """``diffcls.json``'s ``key`` (an int, or a float for ``kind=float``) >= ``minimum``, else ``default``."""
    value = meta.get(key, default)
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise UserError(f"{folder}/diffcls.json: {key} must be a number >= {minimum}, got {value!r}")
    return kind(value)


def meta_of(folder: Path) -> dict:
    return read_json(folder / "diffcls.json") if (folder / "diffcls.json").is_file() else {}
