"""Load a model bundle from a local folder, the bundled model, or (later) a preset.

Supported layouts (all local; the network is never touched):

* Stable Diffusion 1.x/2.x diffusers folders: ``unet/ scheduler/ text_encoder/
  tokenizer/ vae/``. Images go through the VAE (mean latent times its scaling
  factor).
* Pixel-space text-to-image folders: the same without ``vae/`` (the bundled
  ``digits`` model). Pixels are the "latents".

Weights are read from safetensors only: a folder that holds only pickled
``.bin`` weights is refused, since unpickling an untrusted file runs code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..images import as_hw, preprocess
from .bundle import ModelBundle
from .fingerprint import fingerprint_paths

BUNDLED = {name: Path(__file__).with_name(name) for name in ("digits", "numbers")}


@contextmanager
def quiet_loading():
    """Silence the libraries' per-load progress bars and advice while loading; restore afterwards."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was_t, was_d = tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled()
    tv, dv = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    # critical: failures become one UserError (load_weights), not a log line before it
    tlog.set_verbosity(tlog.CRITICAL)
    dlog.set_verbosity(dlog.CRITICAL)
    try:
        yield
    finally:
        tlog.set_verbosity(tv)
        dlog.set_verbosity(dv)
        if was_t:
            tlog.enable_progress_bar()
        if was_d:
            dlog.enable_progress_bar()


def _need(folder: Path, sub: str, what: str) -> Path:
    p = folder / sub
    if not p.is_dir():
        raise UserError(f"{folder}: missing {sub}/ ({what}); expected a diffusers folder with unet/, scheduler/, text_encoder/, tokenizer/ and optionally vae/")
    if sub != "tokenizer" and sub != "scheduler":
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: missing config.json")
        if not any(p.glob("*.safetensors")):
            if any(p.glob("*.bin")) or any(p.glob("*.ckpt")):
                raise UserError(f"{p}: only pickled weights (.bin/.ckpt) found; diffcls-fast loads safetensors only (convert with save_pretrained(safe_serialization=True))")
            raise UserError(f"{p}: no .safetensors weights found")
    return p


def _variant(p: Path) -> str | None:
    """ "fp16" for a folder that holds only ``*.fp16.safetensors`` weights (a ``variant="fp16"`` download)."""
    files = [f.name for f in p.glob("*.safetensors")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def load_weights(cls, path: Path, what: str, **kw):
    """``cls.from_pretrained(path)`` for a diffusers or transformers model, local safetensors only,
    refusing what the libraries only log: weights the config expects but the file lacks
    (``missing_keys``: they would be left random) or holds at another shape. Any failure is
    one UserError naming the component."""
    # local files only, safetensors only (diffusers callers add low_cpu_mem_usage=False: no `accelerate` needed)
    kw = {"use_safetensors": True, "local_files_only": True, **kw}
    variant = _variant(path)
    if variant:
        kw["variant"] = variant
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kw)
    except UserError:
        raise
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError, RuntimeError (state dict), ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[0])  # the line that names a tensor
        raise UserError(f"{path}: cannot load {what} ({detail})") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or []]
    if missing:
        raise UserError(f"{path}: the weights lack {len(missing)} tensor(s) its config.json asks for (e.g. {missing[0]}); config and weights do not match")
    if mismatched:
        raise UserError(f"{path}: {len(mismatched)} tensor(s) have another shape than config.json says (e.g. {mismatched[0]}); config and weights do not match")
    return model


def _resolution(value) -> int | tuple[int, int]:
    """A resolution from a config: an int (square) or a [H, W] pair."""
    try:
        if isinstance(value, int):
            return value
        h, w = (int(v) for v in value)
        return (h, w) if h != w else h
    except (TypeError, ValueError):
        raise UserError(f"bad resolution {value!r} in the model's config; expected an int or [height, width]") from None


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: cannot read JSON ({e})") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DEVICE_KINDS = "cpu, cuda, cuda:N, mps"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` that this machine can use, or one :class:`UserError` saying why not.

    ``None`` (or ``"auto"``) picks CUDA when available, else the CPU. Checked before anything
    is loaded: torch itself answers a bad device with an assertion deep inside ``.to()``.
    """
    if device is None or device == "auto":
        return default_device()
    if isinstance(device, torch.device):
        dev, text = device, str(device)
    else:
        text = str(device).strip().lower()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None:
            raise UserError(f"device {str(device)!r}: not a device (expected {_DEVICE_KINDS})")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device {text!r}: MPS is not available on this machine (torch {torch.__version__})")
        return dev
    if dev.type != "cuda":
        raise UserError(f"device {text!r}: not supported (expected {_DEVICE_KINDS})")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise UserError(f"device {text!r}: this torch build has no CUDA (torch {torch.__version__}); use cpu, or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise UserError(f"device {text!r}: no CUDA device is usable here (torch {torch.__version__} built for CUDA {torch.version.cuda}, but torch.cuda.is_available() is False)")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise UserError(f"device {text!r}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return dev


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise UserError(f"unknown dtype {dtype!r}; expected one of fp32, fp16, bf16, auto")
    return table[dtype]


def load_model(name_or_path: str | Path = "digits", *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> ModelBundle:
    """Load a model bundle by bundled name (``digits``), preset (``preset:NAME``) or local folder path."""
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    name = str(name_or_path)
    if name.startswith("preset:"):
        from .presets import load_preset

        return load_preset(name.removeprefix("preset:"), device=dev, dtype=dt)
    folder = BUNDLED.get(name, Path(name).expanduser())
    if not folder.exists():
        known = ", ".join(sorted(BUNDLED))
        raise UserError(f"model {name!r}: no such folder (bundled models: {known}; presets: preset:NAME)")
    if not folder.is_dir():
        raise UserError(f"model {name!r}: not a folder")
    from .families import detect_family

    return detect_family(folder)(folder, name=name if name in BUNDLED else folder.resolve().name, device=dev, dtype=dt)


def load_text_to_image(folder: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """Stable Diffusion layout (with or without a VAE)."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet_dir = _need(folder, "unet", "the denoiser")
    te_dir = _need(folder, "text_encoder", "the text encoder")
    tok_dir = _need(folder, "tokenizer", "the tokenizer")
    sched_cfg = _scheduler_config(folder)
    has_vae = check_vae_folder(folder)
    vae_dir = _need(folder, "vae", "the autoencoder") if has_vae else None

    with quiet_loading():
        unet = load_weights(UNet2DConditionModel, unet_dir, "the denoiser", low_cpu_mem_usage=False, torch_dtype=dtype)
        text_encoder = load_weights(CLIPTextModel, te_dir, "the text encoder", torch_dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except Exception as e:  # a broken tokenizer folder: OSError, ValueError, JSON errors, ...
            raise UserError(f"{tok_dir}: cannot load the tokenizer ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    check_text_conditioning(folder, unet.config, text_encoder.config, len(tokenizer))
    unet.to(device).eval().requires_grad_(False)
    text_encoder.to(device).eval().requires_grad_(False)
    meta = _read_json(folder / "diffcls.json") if (folder / "diffcls.json").is_file() else {}

    vae = None
    if has_vae:
        from diffusers import AutoencoderKL

        with quiet_loading():
            vae = load_weights(AutoencoderKL, vae_dir, "the autoencoder", low_cpu_mem_usage=False, torch_dtype=vae_dtype(vae_dir, dtype))
        vae.to(device).eval().requires_grad_(False)
        latent_hw = as_hw(_resolution(unet.config.sample_size))
        resolution = vae_resolution(vae, latent_hw)
        channels = int(vae.config.in_channels)
        if int(vae.config.latent_channels) != int(unet.config.in_channels):
            raise UserError(f"{folder}: vae has {vae.config.latent_channels} latent channels but unet expects {unet.config.in_channels}")
    else:
        # Pixel space: the image is the latent, square (an int) or (H, W) (the bundled numbers model).
        check_pixel_channels(folder, int(unet.config.in_channels))
        resolution = _resolution(meta.get("resolution", unet.config.sample_size))
        channels = int(meta.get("channels", unet.config.in_channels))
        if channels != int(unet.config.in_channels):
            raise UserError(f"{folder}: no vae/, so images must have the unet's {unet.config.in_channels} channels, but diffcls.json says {channels}")
        latent_hw = as_hw(resolution)

    acp = alphas_cumprod_from_config(sched_cfg)
    pred_type = sched_cfg.get("prediction_type", "epsilon")
    max_len = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))

    encode_images = make_image_encoder(vae, resolution, channels, device, dtype)

    @torch.no_grad()
    def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
        ids = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        out = [text_encoder(chunk.to(device))[0] for chunk in ids.split(64)]
        return torch.cat(out).to(dtype)

    denoise = make_unet_denoiser(raw_network_call(unet), acp, pred_type, device)
    te_fp = fingerprint_paths(te_dir, tok_dir)
    unknown_words = make_unknown_word_finder(tokenizer)
    return ModelBundle(
        name=name,
        cond_kind="text",
        latent_shape=(int(unet.config.in_channels), *latent_hw),
        image_resolution=resolution,
        image_channels=channels,
        alphas_cumprod=acp,
        prediction_type=pred_type,
        device=device,
        dtype=dtype,
        fingerprint=fingerprint_paths(unet_dir, te_dir, tok_dir, folder / "scheduler", *([vae_dir] if vae_dir else [])),
        text_fingerprint=te_fp,
        encode_images=encode_images,
        encode_prompts=encode_prompts,
        denoise=denoise,
        network=unet,
        cond_shape=(max_len, int(text_encoder.config.hidden_size)),
        family="sd",
        class_names=list(meta.get("class_names", [])),
        prompt_template=meta.get("prompt_template", "a photo of a {}."),
        default_prompts=list(meta.get("prompts", [])),
        path=str(folder),
        calibration=_calibration(meta.get("calibration", {}), folder),
        unknown_words=unknown_words,
        unk_token=tokenizer.unk_token if unknown_words is not None else None,
    )


def check_vae_folder(folder: Path) -> bool:
    """Whether the model has a VAE: ``vae/`` is a folder. A ``vae`` that is a file, or a
    ``model_index.json`` that lists a vae the folder lacks, is a broken latent model, not a
    pixel-space one (it would fail every image, or score latents as pixels)."""
    p = folder / "vae"
    if p.is_dir():
        return True
    if p.exists():
        raise UserError(f"{p}: not a folder (the autoencoder); expected vae/ with config.json and safetensors weights")
    idx = folder / "model_index.json"
    listed = _read_json(idx).get("vae") if idx.is_file() else None
    if isinstance(listed, list) and any(x is not None for x in listed):
        raise UserError(f"{folder}: model_index.json lists a vae, but there is no vae/ folder; copy the autoencoder into vae/")
    return False


def vae_dtype(vae_dir: Path, dtype: torch.dtype) -> torch.dtype:
    """float32 for a VAE whose config sets ``force_upcast`` (SD's do) when the model runs in fp16:
    its encoder can overflow to inf/NaN in fp16. It runs once per image, so the cost is small."""
    cfg = _read_json(vae_dir / "config.json")
    return torch.float32 if dtype == torch.float16 and cfg.get("force_upcast", True) else dtype


def check_pixel_channels(folder: Path, in_channels: int) -> None:
    """Without a VAE the image is the latent: 1 (grayscale) or 3 (RGB) channels only."""
    if in_channels not in (1, 3):
        raise UserError(f"{folder}: the denoiser takes {in_channels} input channels and there is no vae/: a latent model needs its autoencoder in vae/")


def vae_resolution(vae, latent_hw: tuple[int, int]) -> int | tuple[int, int]:
    """The image size a VAE maps onto a (h, w) latent: an int when square."""
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = latent_hw[0] * scale, latent_hw[1] * scale
    return h if h == w else (h, w)


def check_text_conditioning(folder: Path, unet_cfg, te_cfg, tokenizer_len: int) -> None:
    """The text encoder, tokenizer and unet must fit each other; found at load, not as a shape
    error in the first denoiser call."""
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
        if unet_cfg.get(key) is not None:
            raise UserError(f"{folder}/unet: {key} = {unet_cfg.get(key)!r}: a unet with extra conditioning (SDXL and the like) is not supported; Stable Diffusion 1.x/2.x-style unets are")
    cross = unet_cfg.get("cross_attention_dim")
    hidden = int(te_cfg.hidden_size)
    if isinstance(cross, int) and cross != hidden:
        raise UserError(f"{folder}: the text encoder's hidden size is {hidden} but the unet's cross_attention_dim is {cross}; they must be the same")
    if tokenizer_len > int(te_cfg.vocab_size):
        raise UserError(f"{folder}: the tokenizer has {tokenizer_len} tokens but the text encoder only {te_cfg.vocab_size} embeddings; they are not a pair")


def _calibration(cal: object, folder: Path) -> dict:
    """diffcls.json's "calibration" ({policy: {"temperature": T > 0, "floor": 0 <= a < 1, ...}}), checked."""
    if not isinstance(cal, dict):
        raise UserError(f"{folder}/diffcls.json: 'calibration' must be an object of policy name -> {{temperature, floor}}")
    for policy, c in cal.items():
        t, a = (c.get("temperature"), c.get("floor", 0.0)) if isinstance(c, dict) else (None, None)
        if not (isinstance(t, (int, float)) and t > 0 and isinstance(a, (int, float)) and 0 <= a < 1):
            raise UserError(f"{folder}/diffcls.json: calibration[{policy!r}] needs a temperature > 0 and a floor in [0, 1), got {c!r}")
        if c.get("loss", "l2") not in ("l2", "l1", "huber", "x0"):
            raise UserError(f"{folder}/diffcls.json: calibration[{policy!r}] has loss {c['loss']!r}; it must be l2, l1, huber or x0 (the loss it was fitted with)")
    return cal


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
        enc = tokenizer(list(prompts), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            for tid, (a, b) in zip(ids, offsets):
                word = prompts[i][a:b]
                if tid == unk_id and word != tokenizer.unk_token:
                    out.append((i, word))
        return out

    return unknown_words


def make_image_encoder(vae, resolution: int, channels: int, device: torch.device, dtype: torch.dtype):
    """``encode_images(images) -> x0`` (float32): preprocess, then the VAE's mean latent times its scaling factor.

    Without a VAE, the preprocessed pixels are the latents.
    """

    @torch.no_grad()
    def encode_images(images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        px = torch.stack([im if isinstance(im, torch.Tensor) else preprocess(im, resolution, channels) for im in images])
        if vae is None:
            return px.to(device=device, dtype=torch.float32)
        dt = next(vae.parameters()).dtype  # float32 when the VAE asks to be upcast (see vae_dtype)
        out = [vae.encode(c.to(device, dt)).latent_dist.mean.float() * float(vae.config.scaling_factor) for c in px.split(16)]
        return torch.cat(out)

    return encode_images


def _scheduler_config(folder: Path) -> dict:
    d = folder / "scheduler"
    if not d.is_dir():
        raise UserError(f"{folder}: missing scheduler/ (the noise schedule)")
    p = d / "scheduler_config.json"
    if not p.is_file():
        raise UserError(f"{d}: missing scheduler_config.json")
    return _read_json(p)


BETA_SCHEDULERS = frozenset(
    f"{n}Scheduler"
    for n in (
        "DDPM",
        "DDIM",
        "PNDM",
        "EulerDiscrete",
        "EulerAncestralDiscrete",
        "DPMSolverMultistep",
        "DPMSolverSinglestep",
        "LMSDiscrete",
        "HeunDiscrete",
        "UniPCMultistep",
        "LCM",
        "KDPM2Discrete",
        "KDPM2AncestralDiscrete",
        "DEISMultistep",
        "TCD",
        "SASolver",
    )
)


def alphas_cumprod_from_config(cfg: dict) -> torch.Tensor:
    """The cumulative alpha product of a diffusers scheduler config, in float64 on the CPU.

    Every beta-based scheduler (DDPM, DDIM, PNDM, Euler, DPM-Solver, ...) shares the training
    schedule these keys define. A config without betas (flow matching, EDM/sigma-only) would
    silently get DDPM's default schedule, so it is refused.
    """
    from diffusers import DDPMScheduler

    cls = str(cfg.get("_class_name", ""))
    has_betas = any(k in cfg for k in ("beta_start", "beta_end", "beta_schedule", "trained_betas"))
    # a beta-family scheduler without beta keys means its defaults, which are DDPM's (linear 1e-4 .. 0.02)
    if "FlowMatch" in cls or "EDM" in cls or not (has_betas or cls in BETA_SCHEDULERS):
        raise UserError(f"scheduler {cls or '(no _class_name)'}: not a beta (DDPM-family) noise schedule; flow-matching and sigma-only (EDM) models are not supported")
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type", "rescale_betas_zero_snr")
    try:
        sched = DDPMScheduler(**{k: cfg[k] for k in keys if k in cfg and cfg[k] is not None})
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"unsupported noise schedule in scheduler config ({e})") from None
    return sched.alphas_cumprod.double()


def raw_network_call(net: torch.nn.Module, class_cond: bool = False):
    """``raw(x_t, t, cond) -> network output`` of a diffusers UNet/transformer (what export traces)."""
    if class_cond:
        return lambda x_t, t, cond: net(x_t, t, class_labels=cond).sample
    return lambda x_t, t, cond: net(x_t, t, encoder_hidden_states=cond).sample


def make_unet_denoiser(raw, acp: torch.Tensor, pred_type: str, device: torch.device):
    """Wrap a raw network call as ``denoise(x_t, t, cond) -> eps_hat`` (always eps).

    ``raw`` is the network itself, whichever backend runs it (eager, compiled,
    ONNX Runtime, TensorRT): the eps extraction below is shared by all of them.
    """
    if pred_type not in ("epsilon", "v_prediction"):
        raise UserError(f"prediction_type {pred_type!r} is not supported (epsilon or v_prediction)")
    acp_dev = acp.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def denoise(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = raw(x_t, t, cond)
        if out.shape[1] != x_t.shape[1]:  # learned sigma: the first half of the channels is eps
            out = out[:, : x_t.shape[1]]
        if pred_type == "v_prediction":
            return v_to_eps(out, x_t, acp_dev[t])
        return out

    return denoise


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(abar) * v + sqrt(1 - abar) * x_t, for v = sqrt(abar) * eps - sqrt(1 - abar) * x0."""
    a = abar_t.sqrt().view(-1, 1, 1, 1).to(v.dtype)
    b = (1 - abar_t).sqrt().view(-1, 1, 1, 1).to(v.dtype)
    return a * v + b * x_t
