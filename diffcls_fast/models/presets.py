"""Architecture presets with random weights — for timing only, never for accuracy.

``preset:sd15``, ``preset:sd2-base`` and ``preset:dit-xl-2-256`` instantiate the
published denoiser architectures (diffusers configs of Stable Diffusion v1.5,
Stable Diffusion 2 base, and DiT-XL/2 at 256 px) with random weights. The
text encoder and VAE are replaced by deterministic stand-ins of the right
shapes (random embeddings seeded by the prompt; a resized image as the
latent), since only the denoiser's cost matters for timing. Every output made
with a preset says "random weights: timing only", and ``eval`` refuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..images import preprocess
from .bundle import ModelBundle
from .common import alphas_cumprod_from_config, make_class_encoder, make_unet_denoiser, quiet_loading, raw_network_call

_SD_COMMON = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
_SD_SCHED = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

PRESETS: dict[str, dict] = {
    # runwayml/stable-diffusion-v1-5 unet/config.json: 859.5M parameters
    "sd15": dict(
        kind="unet",
        unet=dict(_SD_COMMON, cross_attention_dim=768, attention_head_dim=8),
        text=(77, 768),
        sched=dict(_SD_SCHED, prediction_type="epsilon"),
        params=859.5e6,
    ),
    # stabilityai/stable-diffusion-2-base unet/config.json: 865.9M parameters
    "sd2-base": dict(
        kind="unet",
        unet=dict(_SD_COMMON, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
        text=(77, 1024),
        sched=dict(_SD_SCHED, prediction_type="epsilon"),
        params=865.9e6,
    ),
    # facebook/DiT-XL-2-256 transformer/config.json, learned sigma (8 output channels). The paper's 675M
    # counts the timestep/class embedders once; the diffusers layout gives each of the 28 blocks its own
    # copy (AdaLayerNormZero), hence 749.8M parameters in this layout.
    "dit-xl-2-256": dict(
        kind="dit",
        net=dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        ),
        sched=dict(
            num_train_timesteps=1000,
            beta_schedule="linear",
            beta_start=0.0001,
            beta_end=0.02,
            prediction_type="epsilon",
        ),
        params=749.8e6,
    ),
}


def preset_network(
    name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The preset's denoiser with random weights (``device="meta"``: shapes only, no memory)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join('preset:' + k for k in PRESETS)}")
    p = PRESETS[name]
    with torch.device(device), quiet_loading():
        if p["kind"] == "unet":
            from diffusers import UNet2DConditionModel

            net = UNet2DConditionModel(**p["unet"])
        else:
            from diffusers import DiTTransformer2DModel

            net = DiTTransformer2DModel(**p["net"])
        return net if dtype == torch.float32 else net.to(dtype)


def _seeded(prompt: str, shape: tuple[int, ...]) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little") >> 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def load_preset(name: str, *, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join('preset:' + k for k in PRESETS)}")
    p = PRESETS[name]
    torch.manual_seed(0)
    net = preset_network(name, device=device, dtype=dtype).eval().requires_grad_(False)
    acp = alphas_cumprod_from_config(p["sched"])
    class_cond = p["kind"] == "dit"
    if class_cond:
        latent = (4, int(p["net"]["sample_size"]), int(p["net"]["sample_size"]))
        n_classes = int(p["net"]["num_embeds_ada_norm"])
        names = [str(i) for i in range(n_classes)]
        encode_prompts = make_class_encoder(names, device)
        cond_shape: tuple[int, ...] = ()
    else:
        latent = (4, int(p["unet"]["sample_size"]), int(p["unet"]["sample_size"]))
        names = []
        cond_shape = p["text"]

        def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
            return torch.stack([_seeded(pr, cond_shape) for pr in prompts]).to(device, dtype)

    resolution = latent[1] * 8

    def encode_images(images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        # Stand-in for the VAE: the image downsampled to latent size, channels tiled. Timing only.
        px = torch.stack([im if isinstance(im, torch.Tensor) else preprocess(im, resolution, 3) for im in images])
        small = F.interpolate(px.float(), size=latent[1:], mode="area")
        return torch.cat([small, small[:, :1]], dim=1).to(device)

    return ModelBundle(
        name=f"preset:{name}",
        cond_kind="class" if class_cond else "text",
        latent_shape=latent,
        image_resolution=resolution,
        image_channels=3,
        alphas_cumprod=acp,
        prediction_type=p["sched"]["prediction_type"],
        device=device,
        dtype=dtype,
        fingerprint=f"preset-{name}-random-seed0",
        text_fingerprint=f"preset-{name}-random-seed0",
        encode_images=encode_images,
        encode_prompts=encode_prompts,
        denoise=make_unet_denoiser(
            raw_network_call(net, class_cond=class_cond), acp, p["sched"]["prediction_type"], device
        ),
        network=net,
        random_weights=True,
        cond_shape=tuple(cond_shape),
        family="dit" if class_cond else "sd",
        class_names=names,
        prompt_template="a photo of a {}.",
        path=f"preset:{name}",
    )
