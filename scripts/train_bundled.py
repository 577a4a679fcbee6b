"""Train a bundled model (``digits`` or ``numbers``): a pixel-space text-to-image diffusion model.

    python scripts/train_bundled.py --model digits --out diffcls_fast/models/digits --steps 8000
    python scripts/train_bundled.py --model numbers --out diffcls_fast/models/numbers --steps 12000
    nice -n 19 python scripts/train_bundled.py --model fashion --run runs/fashion  # resumable

``fashion`` (a latent model on Fashion-MNIST with a frozen pretrained text encoder) is trained
by ``scripts/train_fashion.py``, which this script hands ``--model fashion`` to; see its docstring.

It trains a small diffusers ``UNet2DConditionModel`` and a small ``CLIPTextModel``
(with a word-level tokenizer) jointly, from scratch, on the 1,400 training images
of scikit-learn's UCI digits, through the same preprocessing ``classify`` uses,
with captions drawn from several templates:

* ``digits``: one digit, 8x8 (its native resolution), 10 classes.
* ``numbers``: two training digits side by side, 8x16, 100 ordered-pair classes;
  a fresh random pair per sample (1,400^2 combinations), each half shifted on its own.

The output folder has the Stable Diffusion layout without a VAE, so the same
loader serves it and real SD folders. Weights are saved as fp16 safetensors,
with the EMA weights as the released ones. Everything is seeded. On a 2-core CPU
one step (batch 128) takes about 0.25 s for digits; ``--device cuda`` trains on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffcls_fast.data import digits, numbers
from diffcls_fast.images import preprocess

MAX_TOKENS = 16


class DigitsTask:
    """One 8x8 digit per image. The digits are trained at their native resolution:
    upsampling adds no information, and 16x16 costs 4x the compute in training and in classification."""

    name = "digits"
    resolution = 8
    class_names = digits.CLASS_NAMES

    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        self.x, self.labels = x, labels
        self.n_templates = len(digits.TEMPLATES)

    def captions(self) -> list[list[str]]:
        """captions[class][template]."""
        return [[tpl.format(name=n, digit=c) for tpl in digits.TEMPLATES] for c, n in enumerate(digits.CLASS_NAMES)]

    def sample(self, rng: np.random.Generator, batch: int, shift_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        bi = torch.from_numpy(rng.integers(0, len(self.x), batch))
        return random_shift(self.x[bi], rng, shift_prob), self.labels[bi]

    def meta(self) -> dict:
        return {
            "resolution": self.resolution,
            "prompts": digits.default_prompts(),
            "prompt_template": digits.TEMPLATES[0].replace("{name}", "{}"),
        }


class NumbersTask(DigitsTask):
    """Two training digits side by side (8x16); class 10a+b, captions name both in order."""

    name = "numbers"
    resolution = numbers.RESOLUTION
    class_names = numbers.CLASS_NAMES

    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        super().__init__(x, labels)
        self.n_templates = len(numbers.TEMPLATES)

    def captions(self) -> list[list[str]]:
        return [[numbers.prompt(c // 10, c % 10, k) for k in range(len(numbers.TEMPLATES))] for c in range(100)]

    def sample(self, rng: np.random.Generator, batch: int, shift_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        bi = torch.from_numpy(rng.integers(0, len(self.x), (batch, 2)))
        left = random_shift(self.x[bi[:, 0]], rng, shift_prob)
        right = random_shift(self.x[bi[:, 1]], rng, shift_prob)
        return torch.cat([left, right], dim=-1), 10 * self.labels[bi[:, 0]] + self.labels[bi[:, 1]]

    def meta(self) -> dict:
        return {
            "resolution": list(self.resolution),
            "prompts": numbers.default_prompts(),
            "prompt_template": "the digits {}",
        }


TASKS = {"digits": DigitsTask, "numbers": NumbersTask}


def build_tokenizer(task):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = set()
    for per_class in task.captions():
        for cap in per_class:
            words.update(cap.lower().split())
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=MAX_TOKENS,
    )


def build_models(vocab_size: int, tokenizer, sample_size):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
    return text_encoder, unet, scheduler


def random_shift(x0: torch.Tensor, rng: np.random.Generator, prob: float) -> torch.Tensor:
    """Shift each image by up to one pixel (with probability ``prob``), filling with background.

    1,400 training images are few; one-pixel shifts are label-preserving and make the
    model generalise to the held-out writers.
    """
    b, _, h, w = x0.shape
    padded = F.pad(x0, (1, 1, 1, 1), value=-1.0)
    off = np.where(rng.random((b, 2)) < prob, rng.integers(0, 3, (b, 2)), 1)
    rows = torch.from_numpy(off[:, 0, None] + np.arange(h))
    cols = torch.from_numpy(off[:, 1, None] + np.arange(w))
    return padded[torch.arange(b)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def save(out: Path, unet, text_encoder, tokenizer, scheduler, meta: dict, dtype: torch.dtype = torch.float16) -> None:
    """Save the SD-layout folder. Weights are stored in fp16 (half the size; the loader upcasts)."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(unet).to(dtype).save_pretrained(out / "unet", safe_serialization=True)
    copy.deepcopy(text_encoder).to(dtype).save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": __import__("diffusers").__version__,
                "scheduler": ["diffusers", "DDPMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": [None, None],
            },
            indent=2,
        )
        + "\n"
    )
    (out / "diffcls.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    if _wants_fashion(sys.argv[1:]):
        # a latent model with a frozen pretrained encoder and resumable stages: its own script (same folder)
        from train_fashion import main as train_fashion

        train_fashion(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(TASKS) + ["fashion"]
    ap.add_argument("--model", choices=models, default="digits", help="which bundled model to train")
    ap.add_argument("--out", default=None, help="output folder (default: diffcls_fast/models/MODEL)")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift-prob", type=float, default=0.5)
    ap.add_argument("--save-every", type=int, default=0, help="also save EMA snapshots to OUT-stepN")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    # --model fashion is handed to train_fashion.py before this parser runs; listed here for --help
    fashion = ap.add_argument_group("--model fashion only (scripts/train_fashion.py --help lists all)")
    fashion.add_argument("--run", help="checkpoints, caches and loss logs; rerunning resumes from them")
    fashion.add_argument("--export", action="store_true", help="only write --out from the newest checkpoint")
    args = ap.parse_args()
    if args.run or args.export:
        ap.error("--run and --export are options of --model fashion")
    args.out = args.out or f"diffcls_fast/models/{args.model}"
    device = torch.device(args.device)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    pil, labels, _ = digits.load_split("train")  # both tasks train on the 1,400 training digits only
    x = torch.stack([preprocess(im, 8, 1) for im in pil])  # [N, 1, 8, 8]
    task = TASKS[args.model](x, torch.as_tensor(labels))

    tokenizer = build_tokenizer(task)
    text_encoder, unet, scheduler = build_models(len(tokenizer), tokenizer, task.resolution)
    n_params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in text_encoder.parameters())
    print(f"parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, total {n_params / 1e6:.2f}M")

    # All (class, template) caption ids, tokenized once.
    flat = [cap for per_class in task.captions() for cap in per_class]
    ids = tokenizer(flat, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    ids = ids.view(len(task.class_names), task.n_templates, MAX_TOKENS).to(device)
    unet.to(device).train()
    text_encoder.to(device).train()

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    warmup = min(200, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    ema = [p.detach().clone() for p in params]

    def swap_in_ema() -> None:
        # Exchange live and EMA weights (calling it twice restores the live ones).
        with torch.no_grad():
            for e, p in zip(ema, params):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    def meta(steps: int, wall: float) -> dict:
        return {
            "name": task.name,
            "channels": 1,
            "class_names": task.class_names,
            **task.meta(),
            "training": {
                "command": (
                    f"python scripts/train_bundled.py --model {args.model} --out {args.out} --steps {args.steps}"
                    + (f" --device {args.device}" if args.device != "cpu" else "")
                ),
                "steps": steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "ema": args.ema,
                "shift_prob": args.shift_prob,
                "seed": args.seed,
                "wall_seconds": round(wall, 1),
                "torch": torch.__version__,
                "device": _device_name(device),
                "threads": torch.get_num_threads(),
                "curve": curve,
            },
        }

    acp = scheduler.alphas_cumprod.float().to(device)
    t0 = time.perf_counter()
    running = 0.0
    curve: list[list[float]] = []  # [step, smoothed loss, seconds]
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x0, cls = task.sample(rng, args.batch_size, args.shift_prob)
        tpl = torch.from_numpy(rng.integers(0, task.n_templates, args.batch_size))
        input_ids = ids[cls.to(device), tpl.to(device)]
        t = torch.from_numpy(rng.integers(0, 1000, args.batch_size)).to(device)
        eps = torch.randn_like(x0).to(device)  # drawn on the CPU: the same noise on every device
        x0 = x0.to(device)
        a = acp[t].sqrt().view(-1, 1, 1, 1)
        b = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        cond = text_encoder(input_ids).last_hidden_state
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
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 200 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t0
            print(f"step {step:6d}  loss {running:.4f}  lr {lr_at(step):.2e}  {el:7.1f}s", flush=True)
            curve.append([step, round(running, 5), round(el, 1)])
        if args.save_every and step and step % args.save_every == 0:
            swap_in_ema()
            save(
                Path(f"{args.out}-step{step}"),
                unet,
                text_encoder,
                tokenizer,
                scheduler,
                meta(step, time.perf_counter() - t0),
            )
            swap_in_ema()

    wall = time.perf_counter() - t0
    swap_in_ema()
    save(Path(args.out), unet, text_encoder, tokenizer, scheduler, meta(args.steps, wall))
    print(f"saved to {args.out} in {wall:.0f}s")


def _wants_fashion(argv: list[str]) -> bool:
    return "--model=fashion" in argv or any(a == "--model" and b == "fashion" for a, b in zip(argv, argv[1:]))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.machine()} CPU x{torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
