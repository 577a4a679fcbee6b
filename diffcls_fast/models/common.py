"""What every model family shares: the device and dtype a model runs on, reading a folder's configs and
weights (with the checks the libraries only log), the VAE, the noise schedule, the denoiser wrapper and
class-id prompts.

Everything is local; the network is never touched. Weights are read from safetensors only: a folder that
holds only pickled ``.bin`` weights is refused, since unpickling an untrusted file runs code.

The family loaders (text_to_image, class_conditional, presets) import this module and nothing of each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..images import preprocess
from .native.schedule import native_alphas_cumprod

_DEVICE_KINDS = "cpu, cuda, cuda:N, mps"

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        hint = "use cpu, or install a CUDA build of torch"
        raise UserError(f"device {text!r}: this torch build has no CUDA (torch {torch.__version__}); {hint}")
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} built for CUDA {torch.version.cuda}, but torch.cuda.is_available() is False"
        raise UserError(f"device {text!r}: no CUDA device is usable here ({built})")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise UserError(f"device {text!r}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a :class:`torch.dtype`; ``None`` (or ``"auto"``) is fp16 on CUDA, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of fp32, fp16, bf16, auto")
    return _DTYPES[dtype]


_LAYOUT = "a diffusers folder with unet/, scheduler/, text_encoder/, tokenizer/ and optionally vae/"


def read_json(p: Path) -> dict:
    """A JSON object from ``p``: every file read this way is a config that its readers look keys up in."""
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: cannot read JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: expected a JSON object ({{...}}), found {type(d).__name__} {d!r:.40}")
    return d


def need_component(folder: Path, sub: str, what: str) -> Path:
    """``folder/sub``, refused unless it is there with a config.json and safetensors weights (tokenizer/ and
    scheduler/ have no weights)."""
    p = folder / sub
    if not p.is_dir():
        raise UserError(f"{folder}: missing {sub}/ ({what}); expected {_LAYOUT}")
    if not sub.startswith("tokenizer") and sub != "scheduler":  # tokenizer_2/, tokenizer_3/ too
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: missing config.json")
        if not any(p.glob("*.safetensors")):
            if any(p.glob("*.bin")) or any(p.glob("*.ckpt")):
                found = "only pickled weights (.bin/.ckpt) found; diffcls-fast loads safetensors only"
                raise UserError(f"{p}: {found} (convert with save_pretrained(safe_serialization=True))")
            raise UserError(f"{p}: no .safetensors weights found")
    return p


def scheduler_config(folder: Path) -> dict:
    d = folder / "scheduler"
    if not d.is_dir():
        raise UserError(f"{folder}: missing scheduler/ (the noise schedule)")
    p = d / "scheduler_config.json"
    if not p.is_file():
        raise UserError(f"{d}: missing scheduler_config.json")
    return read_json(p)


def parse_resolution(value) -> int | tuple[int, int]:
    """A resolution from a config: an int (square) or a [H, W] pair."""
    try:
        if isinstance(value, int):
            return value
        h, w = (int(v) for v in value)
        return (h, w) if h != w else h
    except (TypeError, ValueError):
        raise UserError(f"bad resolution {value!r} in the model's config; expected an int or [height, width]") from None


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
    problem = None
    if missing:
        problem = f"the weights lack {len(missing)} tensor(s) its config.json asks for (e.g. {missing[0]})"
    elif mismatched:
        problem = f"{len(mismatched)} tensor(s) have another shape than config.json says (e.g. {mismatched[0]})"
    if problem:
        raise UserError(f"{path}: {problem}; config and weights do not match")
    return model


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
    listed = read_json(idx).get("vae") if idx.is_file() else None
    if isinstance(listed, list) and any(x is not None for x in listed):
        fix = "copy the autoencoder into vae/"
        raise UserError(f"{folder}: model_index.json lists a vae, but there is no vae/ folder; {fix}")
    return False


def vae_dtype(vae_dir: Path, dtype: torch.dtype) -> torch.dtype:
    """float32 for a VAE whose config sets ``force_upcast`` (SD's do) when the model runs in fp16:
    its encoder can overflow to inf/NaN in fp16. It runs once per image, so the cost is small."""
    cfg = read_json(vae_dir / "config.json")
    return torch.float32 if dtype == torch.float16 and cfg.get("force_upcast", True) else dtype


def check_pixel_channels(folder: Path, in_channels: int) -> None:
    """Without a VAE the image is the latent: 1 (grayscale) or 3 (RGB) channels only."""
    if in_channels not in (1, 3):
        why = "a latent model needs its autoencoder in vae/"
        raise UserError(f"{folder}: the denoiser takes {in_channels} input channels and there is no vae/: {why}")


def vae_resolution(vae, latent_hw: tuple[int, int]) -> int | tuple[int, int]:
    """The image size a VAE maps onto a (h, w) latent: an int when square."""
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = latent_hw[0] * scale, latent_hw[1] * scale
    return h if h == w else (h, w)


def make_image_encoder(vae, resolution: int, channels: int, device: torch.device, dtype: torch.dtype):
    """``encode_images(images) -> x0`` (float32): preprocess, then the VAE's mean latent, minus its shift factor
    (SD3 and Flux VAEs have one; SD's none), times its scaling factor.

    Without a VAE, the preprocessed pixels are the latents.
    """

    @torch.no_grad()
    def encode_images(images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        pixels = [im if isinstance(im, torch.Tensor) else preprocess(im, resolution, channels) for im in images]
        px = torch.stack(pixels)
        if vae is None:
            return px.to(device=device, dtype=torch.float32)
        dt = next(vae.parameters()).dtype  # float32 when the VAE asks to be upcast (see vae_dtype)
        scale = float(vae.config.scaling_factor)
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        return torch.cat(
            [(vae.encode(c.to(device, dt)).latent_dist.mean.float() - shift) * scale for c in px.split(16)]
        )

    return encode_images


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

# what DDPMScheduler takes from a scheduler config to rebuild its training schedule
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "rescale_betas_zero_snr",
)


def alphas_cumprod_from_config(cfg: dict) -> torch.Tensor:
    """The cumulative alpha product of a diffusers scheduler config, in float64 on the CPU.

    Every beta-based scheduler (DDPM, DDIM, PNDM, Euler, DPM-Solver, ...) shares the training
    schedule these keys define. A config without betas (flow matching, EDM/sigma-only) would
    silently get DDPM's default schedule, so it is refused.
    """
    cls = str(cfg.get("_class_name", ""))
    has_betas = any(k in cfg for k in ("beta_start", "beta_end", "beta_schedule", "trained_betas"))
    # a beta-family scheduler without beta keys means its defaults, which are DDPM's (linear 1e-4 .. 0.02)
    if "FlowMatch" in cls or "EDM" in cls or not (has_betas or cls in BETA_SCHEDULERS):
        what = f"scheduler {cls or '(no _class_name)'}: not a beta (DDPM-family) noise schedule"
        raise UserError(f"{what}; flow-matching and sigma-only (EDM) models are not supported")
    acp = native_alphas_cumprod(cfg)
    if acp is not None:  # the common schedules without importing diffusers (seconds); bit-identical
        return acp.double()
    from diffusers import DDPMScheduler

    try:
        sched = DDPMScheduler(**{k: cfg[k] for k in _SCHEDULE_KEYS if k in cfg and cfg[k] is not None})
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"unsupported noise schedule in scheduler config ({e})") from None
    return sched.alphas_cumprod.double()


def raw_network_call(net: torch.nn.Module, class_cond: bool = False):
    """``raw(x_t, t, cond) -> network output`` of a diffusers UNet/transformer (what export traces)."""
    if class_cond:
        return lambda x_t, t, cond: net(x_t, t, class_labels=cond).sample
    return lambda x_t, t, cond: net(x_t, t, encoder_hidden_states=cond).sample


def make_unet_denoiser(raw, acp: torch.Tensor, pred_type: str, device: torch.device):
    """Wrap a raw network call as ``denoise(x_t, t, cond) -> eps_hat`` (eps for the DDPM family; for
    ``pred_type="flow"`` the velocity eps - x0 the network predicts, which is the engine's target there).

    ``raw`` is the network itself, whichever backend runs it (eager, compiled,
    ONNX Runtime, TensorRT): the eps extraction below is shared by all of them.
    """
    if pred_type not in ("epsilon", "v_prediction", "flow"):
        raise UserError(f"prediction_type {pred_type!r} is not supported (epsilon, v_prediction or flow)")
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


def make_class_encoder(names: list[str], device: torch.device):
    """``encode_prompts(prompts) -> class ids`` for a class-conditional denoiser: a prompt is one of
    ``names`` or an id."""
    lookup = {n: i for i, n in enumerate(names)}
    n = len(names)

    def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
        ids = []
        for p in prompts:
            p = p.strip()
            if p in lookup:
                ids.append(lookup[p])
            elif p.isdecimal() and int(p) < n:  # isdigit() also passes "²", which int() refuses
                ids.append(int(p))
            else:
                hint = f"give a name from its list or an id 0..{n - 1}"
                raise UserError(f"class {p!r} is not one of this model's {n} classes ({hint})")
        return torch.tensor(ids, dtype=torch.int64, device=device)

    return encode_prompts
