"""Tiny random folders of the SDXL, SD3, PixArt and Flux layouts, built with diffusers' and transformers' own
classes and saved with ``save_pretrained`` (safetensors), as real folders are. Tokenizers are built here from a
character vocabulary: nothing is downloaded."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from .tiny_folders import _clip_tokenizer

CHARS = string.ascii_lowercase + string.digits + ".,'-"


def t5_tokenizer(dst: Path, max_len: int = 24):
    """A T5-style tokenizer (pad 0, eos 1, unk 2; '</s>' appended), characters as tokens: a BPE without merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_len
    )
    fast.save_pretrained(dst)
    return fast


def _clip(dst: Path, tok_len: int, hidden: int, projection: int | None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=tok_len,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,  # the penultimate hidden state is read
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection or hidden,
    )
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    model.save_pretrained(dst, safe_serialization=True)


def _t5(dst: Path, tok_len: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=tok_len,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    T5EncoderModel(cfg).save_pretrained(dst, safe_serialization=True)


def _vae(dst: Path, latent_channels: int = 4, shift: float | None = None):
    from diffusers import AutoencoderKL

    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=16,
        shift_factor=shift,
        scaling_factor=1.5 if shift is not None else 0.18215,
    ).save_pretrained(dst, safe_serialization=True)


def _flow_scheduler(dst: Path, **kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **kw).save_pretrained(dst)


def make_sdxl_folder(root: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    root = Path(root)
    n1 = len(_clip_tokenizer(root / "tokenizer"))
    n2 = len(_clip_tokenizer(root / "tokenizer_2"))
    _clip(root / "text_encoder", n1, 16, None)
    _clip(root / "text_encoder_2", n2, 32, 16)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,  # 16 + 32: both encoders' states side by side
        attention_head_dim=4,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,  # pooled (projection_dim) + 6 time ids
    ).save_pretrained(root / "unet", safe_serialization=True)
    _vae(root / "vae")
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        root / "scheduler"
    )
    return root


def make_sd3_folder(root: Path, seed: int = 0, shift: float = 3.0) -> Path:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    root = Path(root)
    n1 = len(_clip_tokenizer(root / "tokenizer"))
    n2 = len(_clip_tokenizer(root / "tokenizer_2"))
    n3 = len(t5_tokenizer(root / "tokenizer_3"))
    _clip(root / "text_encoder", n1, 16, 8)
    _clip(root / "text_encoder_2", n2, 16, 8)
    _t5(root / "text_encoder_3", n3, 32)
    SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=8,
    ).save_pretrained(root / "transformer", safe_serialization=True)
    _vae(root / "vae", shift=0.1)
    _flow_scheduler(root / "scheduler", shift=shift)
    return root


def make_pixart_folder(root: Path, seed: int = 0, additional_conditions: bool = True) -> Path:
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(seed)
    root = Path(root)
    n = len(t5_tokenizer(root / "tokenizer"))
    _t5(root / "text_encoder", n, 32)
    PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=12,  # width 24: the size conditions split it in thirds
        in_channels=4,
        out_channels=8,  # learned sigma: eps, then the variance
        num_layers=1,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=24,
        caption_channels=32,
        use_additional_conditions=additional_conditions,  # PixArt-α at 1024 has them (sample_size 128)
    ).save_pretrained(root / "transformer", safe_serialization=True)
    _vae(root / "vae")
    DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).save_pretrained(
        root / "scheduler"
    )
    return root


def make_flux_folder(root: Path, seed: int = 0, guidance: bool = True) -> Path:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    root = Path(root)
    n1 = len(_clip_tokenizer(root / "tokenizer"))
    n2 = len(t5_tokenizer(root / "tokenizer_2"))
    _clip(root / "text_encoder", n1, 16, None)
    _t5(root / "text_encoder_2", n2, 32)
    FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),
    ).save_pretrained(root / "transformer", safe_serialization=True)
    _vae(root / "vae", shift=0.1)
    _flow_scheduler(root / "scheduler", shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    (root / "diffcls.json").write_text(json.dumps({"resolution": 16}))  # Flux configs carry no native size
    return root
