"""What the native implementation covers, checked key by key against a folder's configs.

Each ``*_refusal`` function returns None when every key of the config has a value the native module
implements, or one line saying which key does not (the loader then takes the diffusers / transformers
path, which stays the reference). Every key must be known and present: a key this file has never seen
(a newer library's option) or a missing one (a library default it does not restate) is a refusal, so a
model with another config can never run on a module that silently ignores part of it.
"""

from __future__ import annotations

from collections.abc import Callable

_ANY = object()  # the value does not change the forward pass (metadata, init, training-only settings)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ints(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_int(x) for x in v)


def _blocks(*allowed: str) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and len(v) > 0 and all(x in allowed for x in v)


def _is(value) -> Callable[[object], bool]:
    # type and value both: True would otherwise pass for 1 and 0 for False
    return lambda v: type(v) is type(value) and v == value


def _resolution(v) -> bool:
    return _int(v) or (isinstance(v, list) and len(v) == 2 and all(_int(x) for x in v))


UNET_KEYS: dict[str, object] = {
    "_class_name": _is("UNet2DConditionModel"),
    "_diffusers_version": _ANY,
    "act_fn": _is("silu"),
    "addition_embed_type": None,
    "addition_embed_type_num_heads": _ANY,  # read only with an addition_embed_type
    "addition_time_embed_dim": None,
    "attention_head_dim": lambda v: _int(v) or _ints(v),  # the head count, num_attention_heads being null
    "attention_type": _is("default"),
    "block_out_channels": _ints,
    "center_input_sample": _is(False),
    "class_embed_type": None,
    "class_embeddings_concat": _is(False),
    "conv_in_kernel": _is(3),
    "conv_out_kernel": _is(3),
    "cross_attention_dim": _int,
    "cross_attention_norm": None,
    "down_block_types": _blocks("DownBlock2D", "CrossAttnDownBlock2D"),
    "downsample_padding": _is(1),
    "dropout": _ANY,  # inference: dropout is off
    "dual_cross_attention": _is(False),
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": _is(True),
    "freq_shift": _is(0),
    "in_channels": _int,
    "layers_per_block": _int,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": lambda v: _num(v) and v == 1,
    "mid_block_type": _is("UNetMidBlock2DCrossAttn"),
    "norm_eps": lambda v: _num(v) and v > 0,
    "norm_num_groups": _int,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": _is(False),
    "out_channels": _int,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": lambda v: _num(v) and v == 1,
    "resnet_skip_time_act": _is(False),
    "resnet_time_scale_shift": _is("default"),
    "reverse_transformer_layers_per_block": None,
    "sample_size": _resolution,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": _is("positional"),
    "timestep_post_act": None,
    "transformer_layers_per_block": _int,
    "up_block_types": _blocks("UpBlock2D", "CrossAttnUpBlock2D"),
    "upcast_attention": _is(False),
    "use_linear_projection": _is(False),
}
UNET_OPTIONAL = {"_name_or_path"}  # where it was saved from; no effect

CLIP_TEXT_KEYS: dict[str, object] = {
    "architectures": _is(["CLIPTextModel"]),
    "model_type": _is("clip_text_model"),
    "attention_dropout": _ANY,
    "bos_token_id": _ANY,  # special ids: the tokenizer's business (and the pooled output's, not used)
    "eos_token_id": _ANY,
    "pad_token_id": _ANY,
    "hidden_act": _is("quick_gelu"),
    "hidden_size": _int,
    "initializer_factor": _ANY,
    "initializer_range": _ANY,
    "intermediate_size": _int,
    "layer_norm_eps": lambda v: _num(v) and v > 0,
    "max_position_embeddings": _int,
    "num_attention_heads": _int,
    "num_hidden_layers": _int,
    "projection_dim": _ANY,  # CLIPTextModel has no projection
    "transformers_version": _ANY,
    "vocab_size": _int,
}
CLIP_TEXT_OPTIONAL = {"dtype", "torch_dtype", "_name_or_path"}  # the saved dtype: the weights say it too

TOKENIZER_CONFIG_KEYS: dict[str, object] = {
    "tokenizer_class": lambda v: v in ("TokenizersBackend", "PreTrainedTokenizerFast"),
    "model_max_length": _int,
    "unk_token": lambda v: isinstance(v, str),
    "pad_token": lambda v: isinstance(v, str),
    "bos_token": _ANY,  # the post-processor's template decides the special tokens, checked there
    "eos_token": _ANY,
}
TOKENIZER_CONFIG_OPTIONAL: dict[str, object] = {
    "backend": _is("tokenizers"),
    "is_local": _ANY,
    "local_files_only": _ANY,
    "max_length": _ANY,  # the call's max_length wins
    "stride": _is(0),
    "pad_to_multiple_of": None,
    "pad_token_type_id": _is(0),
    "padding_side": _is("right"),
    "truncation_side": _is("right"),
    "truncation_strategy": _is("longest_first"),
    "clean_up_tokenization_spaces": _ANY,  # decoding only
}


def _check(cfg: dict, keys: dict[str, object], optional, what: str) -> str | None:
    opt = optional if isinstance(optional, dict) else dict.fromkeys(optional, _ANY)
    for k in cfg:
        if k not in keys and k not in opt:
            return f"{what}: key {k!r} is not one the native implementation knows"
    for k, rule in list(keys.items()) + [(k, r) for k, r in opt.items() if k in cfg]:
        if k not in cfg:
            return f"{what}: key {k!r} is missing (the library default is not restated here)"
        v = cfg[k]
        ok = rule is _ANY or (v is None if rule is None else rule(v))
        if not ok:
            return f"{what}: {k} = {v!r} is not implemented natively"
    return None


def unet_refusal(cfg: dict) -> str | None:
    why = _check(cfg, UNET_KEYS, UNET_OPTIONAL, "unet/config.json")
    if why:
        return why
    n = len(cfg["block_out_channels"])
    heads = cfg["attention_head_dim"]
    heads = [heads] * n if isinstance(heads, int) else heads
    if len(cfg["down_block_types"]) != n or len(cfg["up_block_types"]) != n or len(heads) != n:
        return "unet/config.json: block lists of different lengths"
    if any(c % cfg["norm_num_groups"] for c in cfg["block_out_channels"]):
        return "unet/config.json: a block's channels are not a multiple of norm_num_groups"
    if any(c % h for c, h in zip(cfg["block_out_channels"], heads)):
        return "unet/config.json: a block's channels are not a multiple of its head count"
    return None


def clip_text_refusal(cfg: dict) -> str | None:
    why = _check(cfg, CLIP_TEXT_KEYS, CLIP_TEXT_OPTIONAL, "text_encoder/config.json")
    if why is None and cfg["hidden_size"] % cfg["num_attention_heads"]:
        why = "text_encoder/config.json: hidden_size is not a multiple of num_attention_heads"
    return why


def tokenizer_refusal(tok: dict, tok_cfg: dict) -> str | None:
    """``tokenizer.json`` must be a word-level model behind Lowercase + Whitespace, its added tokens
    special and matched on the raw text, its template ``[special...] A [special...]``."""
    why = _check(tok_cfg, TOKENIZER_CONFIG_KEYS, TOKENIZER_CONFIG_OPTIONAL, "tokenizer/tokenizer_config.json")
    if why:
        return why
    where = "tokenizer/tokenizer.json"
    known = {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor"}
    extra = set(tok) - known - {"decoder", "model"}
    if extra:
        return f"{where}: keys {sorted(extra)} are not ones the native tokenizer knows"
    model = tok.get("model") or {}
    if model.get("type") != "WordLevel" or set(model) != {"type", "vocab", "unk_token"}:
        return f"{where}: model {model.get('type')!r} is not a plain WordLevel model"
    if model["unk_token"] not in model["vocab"]:
        return f"{where}: the unknown token is not in the vocabulary"
    if tok.get("normalizer") != {"type": "Lowercase"}:
        return f"{where}: normalizer {tok.get('normalizer')!r} is not Lowercase"
    if tok.get("pre_tokenizer") != {"type": "Whitespace"}:
        return f"{where}: pre_tokenizer {tok.get('pre_tokenizer')!r} is not Whitespace"
    plain = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    for a in tok.get("added_tokens") or []:
        if {k: a.get(k) for k in plain} != plain or not isinstance(a.get("content"), str) or not a["content"]:
            return f"{where}: added token {a.get('content')!r} is not a plain special token"
    if not any(a["content"] == tok_cfg["pad_token"] for a in tok.get("added_tokens") or []):
        return f"{where}: the pad token is not an added token"
    post = tok.get("post_processor") or {}
    if post.get("type") != "TemplateProcessing":
        return f"{where}: post_processor {post.get('type')!r} is not TemplateProcessing"
    single = post.get("single") or []
    seqs = [i for i, s in enumerate(single) if "Sequence" in s]
    if len(seqs) != 1 or single[seqs[0]]["Sequence"].get("id") != "A":
        return f"{where}: the single-sequence template is not [special...] A [special...]"
    for s in single:
        sid = s.get("SpecialToken", {}).get("id")
        if "SpecialToken" in s and len(post.get("special_tokens", {}).get(sid, {}).get("ids", [])) != 1:
            return f"{where}: template token {sid!r} is not one special token"
    return None
