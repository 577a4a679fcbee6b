"""The model bundle: everything the engine needs from a diffusion model, behind a few callables.

The engine never imports diffusers or transformers; it sees a :class:`ModelBundle`
with ``encode_images``, ``encode_prompts``, ``denoise`` and the noise schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

# denoise(x_t [B,C,H,W], t [B] int64, cond [B,...]) -> the prediction the error is computed against, [B,C,H,W]:
# eps_hat (DDPM family), or the velocity v_hat = eps_hat - x0_hat (prediction_type "flow", see ``target``)
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ModelBundle:
    name: str
    # "text": the condition is a text embedding [L, D] per prompt; "class": a class id.
    cond_kind: str
    latent_shape: tuple[int, int, int]  # (C, H, W) of x0
    image_resolution: int | tuple[int, int]  # pixels fed to encode_images (before the VAE, if any): square or (H, W)
    image_channels: int
    alphas_cumprod: torch.Tensor  # float64 [T], on the CPU
    # what the network predicts: "epsilon" / "v_prediction" (denoise() returns eps) or "flow" (rectified flow:
    # denoise() returns the velocity eps - x0, the engine's target; ``sigmas`` holds the schedule)
    prediction_type: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # identifies the weights (export and cache keys)
    text_fingerprint: str  # identifies tokenizer + text encoder (embedding cache key)
    encode_images: Callable[[Sequence[Image.Image | torch.Tensor]], torch.Tensor]
    encode_prompts: Callable[[Sequence[str]], torch.Tensor]
    denoise: Denoiser
    network: torch.nn.Module | None = None  # the raw denoiser network, for export/compile
    # The module that export and compile trace when the network's call is more than
    # ``network(x_t, t, encoder_hidden_states=cond)`` (SDXL, SD3, PixArt, Flux: a packed condition, a timestep
    # table, latent packing): ``forward(sample, timestep index [B], cond [B, *cond_shape]) -> raw output``, with an
    # ``out_channels`` attribute. None: export wraps ``network`` (export/spec.py RawNetwork).
    raw_module: torch.nn.Module | None = None
    # shape of one condition row: [L, D] text embedding, [L + r, D] packed (models/packed_cond.py), () class id
    cond_shape: tuple[int, ...] = ()
    # export spec key: "sd" (UNet2DCondition), "dit", "class-unet", "sdxl", "sd3", "pixart", "flux"
    family: str = "sd"
    random_weights: bool = False  # presets: timing only, never accuracy
    class_names: list[str] = field(default_factory=list)  # defaults shipped with the model
    prompt_template: str = "{}"  # how a bare class name becomes a prompt
    default_prompts: list[str] = field(default_factory=list)
    path: str = ""
    backend: str = "torch"  # which denoiser implementation actually runs
    # whose modules the network and text encoder are: "native" (plain torch, models/native/) or "diffusers"
    # (diffusers and transformers, the reference)
    implementation: str = "diffusers"
    # Text models whose tokenizer has an unknown token (word-level vocabularies): the (prompt index, word)
    # pairs it would encode as ``unk_token``. None where every string has an encoding (CLIP's byte-level BPE).
    unknown_words: Callable[[Sequence[str]], list[tuple[int, str]]] | None = None
    unk_token: str | None = None
    # Text models: the (prompt index, token count) of each prompt longer than the text encoder takes
    # (``cond_shape[0]`` tokens, special tokens included); the encoder sees only the first ones.
    long_prompts: Callable[[Sequence[str]], list[tuple[int, int]]] | None = None
    # Posterior calibration fitted on the model's train split, per policy name:
    # {"halving": {"temperature": T, "floor": alpha, "loss": "l2", ...}} (see engine/calibration.py); it applies
    # only to runs with the loss it was fitted with (no "loss": l2). Empty: none shipped.
    calibration: dict = field(default_factory=dict)
    # Flow matching (prediction_type "flow"): σ per timestep index, float64 [T] ascending; x_t = (1-σ) x0 + σ eps.
    # ``alphas_cumprod`` then holds the DDPM schedule of the same SNR (models/flow.py). None: a DDPM-family model.
    sigmas: torch.Tensor | None = None
    # Text models whose condition packs more than token states (SDXL's pooled vector and time ids, ...: see
    # models/packed_cond.py): the text encoder's token limit for the long-prompt notice. 0: ``cond_shape[0]``.
    prompt_tokens: int = 0

    @property
    def image_hw(self) -> tuple[int, int]:
        r = self.image_resolution
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def target(self) -> str:
        """What ``denoise`` returns and the error is measured against: "eps" or "velocity" (eps - x0)."""
        return "velocity" if self.prediction_type == "flow" else "eps"

    def noise_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b), float64 [T] on the CPU: x_t = a[t] x0 + b[t] eps. DDPM: (sqrt(ᾱ), sqrt(1 - ᾱ)); flow: (1 - σ, σ)."""
        if self.prediction_type == "flow":
            if self.sigmas is None:
                raise ValueError(f"{self.name}: a flow-matching bundle needs its sigmas")
            s = self.sigmas.to(torch.float64)
            return 1 - s, s
        acp = self.alphas_cumprod.to(torch.float64)
        return acp.sqrt(), (1 - acp).sqrt()

    def describe(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        s = f"{self.name} [{self.backend}, {self.implementation}, {dt}, {self.device}]"
        if self.random_weights:
            s += " (random weights: timing only)"
        return s
