"""What the native-module tests share: the diffusers / transformers references, and a strict comparison."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffcls_fast.models.bundled import BUNDLED

# The bundled models the native modules run: the pixel-space text-to-image ones (fashion is latent, with a BERT
# encoder, and loads through the libraries; tests/models/test_bundled_fashion.py; numbers3 is class-conditional).
NATIVE_BUNDLED = sorted(
    name for name, folder in BUNDLED.items() if (folder / "text_encoder").is_dir() and not (folder / "vae").is_dir()
)


def config(model: str, component: str) -> dict:
    name = "tokenizer.json" if component == "tokenizer" else "config.json"
    return json.loads((BUNDLED[model] / component / name).read_text())


def assert_close(native: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """float32 outputs of the two implementations: the same ops in the same order, so rounding apart."""
    assert native.shape == ref.shape and native.dtype == ref.dtype
    bad = ~torch.isclose(native, ref, rtol=rtol, atol=atol)
    if bad.any():
        idx = bad.nonzero()[:3].tolist()
        worst = (native - ref).abs().max().item()
        n = int(bad.sum())
        raise AssertionError(f"{n} of {bad.numel()} elements differ (first at {idx}; max |diff| {worst:.3g})")


def library_unet(folder: Path | None = None, cfg: dict | None = None, seed: int = 0):
    """diffusers' UNet in float32: the bundled weights of ``folder``, or fresh random weights for ``cfg``."""
    from diffusers import UNet2DConditionModel

    if folder is not None:
        net = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False)
    else:
        torch.manual_seed(seed)
        net = UNet2DConditionModel.from_config(cfg)
        # random but not the init's small values: biases and norms away from 0 and 1 exercise every term
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval().requires_grad_(False)


def library_text_encoder(folder: Path | None = None, cfg: dict | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    if folder is not None:
        net = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    else:
        torch.manual_seed(seed)
        net = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval().requires_grad_(False)
