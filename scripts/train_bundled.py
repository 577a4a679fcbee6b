"""Train a bundled model: ``digits`` or ``numbers`` (pixel-space text-to-image), ``numbers3`` (pixel-space,
class-conditional, 1,000 classes) or ``fashion`` (latent text-to-image).

    python scripts/train_bundled.py --model digits --out diffcls_fast/models/digits --steps 8000
    python scripts/train_bundled.py --model numbers --out diffcls_fast/models/numbers --steps 8000
    OMP_NUM_THREADS=1 nice -n 19 python scripts/train_bundled.py --model numbers3 --run runs/numbers3  # resumable
    OMP_NUM_THREADS=1 nice -n 19 python scripts/train_bundled.py --model numbers-flow --run runs/numbers-flow  # ditto
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

``numbers3`` (three training digits side by side, 8x24, class 100a+10b+c named "three one four") is
class-conditional: a diffusers ``UNet2DModel`` with 1,000 class embeddings, in the folder layout the
class-conditional loader reads (``unet/``, ``scheduler/``, ``classes.txt``). Not a DiT: diffusers'
``DiTTransformer2DModel`` unpatchifies a square token grid only (8x24 fails), and padding to 24x24 would
make the loader's preprocessing crop the image. The class embedding is trained factored (one vector per
digit and position, plus a per-class residual that starts at zero: the positions share what they learn)
and exported as the plain 1,000-row table. Each sample is a fresh random triple of training digits, each
shifted on its own as for ``numbers``. The run is resumable: it checkpoints into ``--run`` (optimizer, EMA
and RNG state) every ``--checkpoint-minutes``, keeps EMA snapshots every ``--snapshot-every`` steps, and
writes ``--out`` (default ``diffcls_fast/models/numbers3``) when done; ``--export`` writes it from the newest
checkpoint (or ``--snapshot FILE``) at any time. One step (batch 64) takes about 0.47 s on one thread of a
busy 2-core CPU, so the default 20,000 steps are about 2.6 h.

``numbers-flow`` is ``numbers`` retrained as rectified flow, for checking the flow-matching path of the
classifier on a model it can be right with: the same architecture, tokenizer, captions, augmentation and
budget (8,000 steps of batch 128, lr 1e-3, EMA 0.999), only the objective differs. A step draws a timestep
index t uniformly from the 1,000 the engine scores, σ = (t + 1) / 1000 (the FlowMatchEulerDiscreteScheduler
table at shift 1.0), x_t = (1 - σ) x0 + σ ε, and regresses the velocity: MSE(unet(x_t, σ x 1000, text), ε - x0),
with the timestep value diffusers' FlowMatch schedulers give the network, which the loader passes too. Uniform
over the indices is the distribution the classifier queries (its timestep policies choose indices of the same
table) and what ``numbers``' ε objective draws its t from, so the two models differ in the objective only. The
folder has a FlowMatchEulerDiscreteScheduler config (shift 1.0, 1,000 timesteps), which makes the loader score
it as flow. Resumable like numbers3 (``--run``, default runs/numbers-flow; the same checkpoints, snapshots
and ``--export``).
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

from diffcls_fast.data import digits, numbers, numbers3
from diffcls_fast.images import preprocess
from diffcls_fast.models.flow import flow_sigmas

MAX_TOKENS = 16
# The pixel-space denoisers' backbone (8x8 -> 4x4 -> 2x2 for digits): the text-to-image and class-conditional UNets
PIXEL_UNET = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 96),
    "layers_per_block": 1,
    "norm_num_groups": 16,
}
NUMBERS3_STEPS = 20000  # batch 64: about 2.6 h on one CPU thread (0.47 s a step)
DEFAULT_STEPS = 8000  # digits and numbers (batch 128), as shipped; numbers-flow repeats numbers' budget


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

    n_digits = 2

    def sample(self, rng: np.random.Generator, batch: int, shift_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_digits`` random training digits side by side, each shifted on its own; the class reads them as a
        decimal number."""
        bi = torch.from_numpy(rng.integers(0, len(self.x), (batch, self.n_digits)))
        parts = [random_shift(self.x[bi[:, k]], rng, shift_prob) for k in range(self.n_digits)]
        cls = sum(10 ** (self.n_digits - 1 - k) * self.labels[bi[:, k]] for k in range(self.n_digits))
        return torch.cat(parts, dim=-1), cls

    def meta(self) -> dict:
        return {
            "resolution": list(self.resolution),
            "prompts": numbers.default_prompts(),
            "prompt_template": "the digits {}",
        }


class Numbers3Task(NumbersTask):
    """Three training digits side by side (8x24); class 100a+10b+c. Class-conditional: no captions."""

    name = "numbers3"
    resolution = numbers3.RESOLUTION
    class_names = numbers3.CLASS_NAMES
    n_digits = numbers3.N_DIGITS


TASKS = {"digits": DigitsTask, "numbers": NumbersTask}  # text-to-image; numbers3: train_numbers3


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


def caption_ids(task, tokenizer, device: torch.device) -> torch.Tensor:
    """All (class, template) caption ids, tokenized once: [classes, templates, MAX_TOKENS]."""
    flat = [cap for per_class in task.captions() for cap in per_class]
    ids = tokenizer(flat, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return ids.view(len(task.class_names), task.n_templates, MAX_TOKENS).to(device)


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
        **PIXEL_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
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


def train_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,400 training digits (every task trains on them only) through classify's preprocessing
    ([N, 1, 8, 8] in [-1, 1]), and their labels."""
    pil, labels, _ = digits.load_split("train")
    return torch.stack([preprocess(im, 8, 1) for im in pil]), torch.as_tensor(labels)


def add_noise(acp: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps: the noised sample epsilon prediction trains on."""
    a = acp[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
    return a * x0 + b * eps


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], step: int, decay: float) -> None:
    """EMA of the weights, its decay warmed up over the first steps (the released weights are the EMA ones)."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema, params):
        e.mul_(d).add_(p.detach(), alpha=1 - d)


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
                "scheduler": ["diffusers", type(scheduler).__name__],
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


# ---------------------------------------------------------------- numbers3: class-conditional, resumable


class FactoredClassEmbedding(torch.nn.Module):
    """The class embedding of class 100a+10b+c (for three digits) as one vector per (position, digit), summed,
    plus a per-class residual that starts at zero.

    Every sample trains the vectors of its three digits, which all classes share, so the 1,000 classes learn
    about as fast as 30 vectors would; the residual lets a class differ from the sum. ``table()`` is the plain
    ``[n_classes, dim]`` embedding that the exported ``UNet2DModel`` holds (its ``class_embedding.weight``).
    """

    def __init__(self, n_digits: int, dim: int):
        super().__init__()
        self.n_digits = n_digits
        self.digit = torch.nn.Parameter(torch.randn(n_digits, 10, dim) / math.sqrt(n_digits))  # the sum: N(0, 1)
        self.residual = torch.nn.Parameter(torch.zeros(10**n_digits, dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(self.n_digits, device=labels.device)
        d = labels[:, None] // 10 ** (self.n_digits - 1 - pos) % 10
        return self.digit[pos, d].sum(1) + self.residual[labels]

    def table(self) -> torch.Tensor:
        return self.forward(torch.arange(10**self.n_digits, device=self.residual.device))


def build_class_unet(task):
    """The numbers3 denoiser: a pixel-space ``UNet2DModel`` with one class embedding per class
    (8x24 -> 4x12 -> 2x6, self-attention at the two coarse levels, FiLM-style class and time conditioning)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=task.resolution,
        **PIXEL_UNET,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=len(task.class_names),
    )


def build_numbers3(task):
    """(the UNet with its class embedding factored for training, the DDPM scheduler)."""
    from train_fashion import build_scheduler

    unet = build_class_unet(task)
    unet.class_embedding = FactoredClassEmbedding(task.n_digits, unet.class_embedding.embedding_dim)
    return unet, build_scheduler()


def train_resumable(args, name: str, model: torch.nn.Module, rng: np.random.Generator, batch_loss) -> None:
    """The resumable loop of numbers3 and numbers-flow, in ``args.run``: AdamW with warmup and cosine decay,
    clipped gradients and an EMA of the weights; a checkpoint (weights, optimizer, EMA, RNGs) every
    ``--checkpoint-minutes`` and at the end, EMA snapshots every ``--snapshot-every`` steps, the smoothed loss
    in loss.tsv. ``batch_loss()`` draws a batch (from ``rng`` and torch's RNG) and returns its loss."""
    from train_fashion import Timer, checkpoint_state, lr_at, resume, save_atomic

    run = Path(args.run)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]
    ckpt_path = run / "ckpt.pt"
    start = resume(ckpt_path, model, opt, rng, ema, torch.device(args.device))
    if start:
        print(f"{name}: resuming at step {start}", flush=True)
    (run / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    print(f"{name}: {sum(p.numel() for p in params) / 1e6:.2f}M parameters, steps {start}..{args.steps}", flush=True)
    warmup = min(200, args.steps // 10)
    log = open(run / "loss.tsv", "a")
    timer, t0, running = Timer(args.checkpoint_minutes), time.perf_counter(), None
    for step in range(start, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, warmup)
        loss = batch_loss()
        optimizer_step(opt, loss, params)
        ema_update(ema, params, step, args.ema)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step + 1 == args.steps:
            el = time.perf_counter() - t0
            lr = lr_at(step, args.steps, args.lr, warmup)
            print(f"step {step:6d}  loss {running:.4f}  lr {lr:.2e}  {el:7.0f}s", flush=True)
            log.write(f"{step}\t{running:.6f}\t{el:.1f}\t{time.time():.0f}\n")
            log.flush()
        if (step + 1) % args.snapshot_every == 0:
            (run / "snapshots").mkdir(exist_ok=True)
            save_atomic({"ema": ema, "step": step + 1}, run / "snapshots" / f"ema_step{step + 1}.pt")
        if timer.due() or step + 1 == args.steps:
            save_atomic(checkpoint_state(model, opt, rng, step + 1, ema), ckpt_path)
    log.close()


def train_numbers3(args) -> None:
    """Train (or resume) the class-conditional numbers3 model in ``args.run``, then export it to ``args.out``."""
    run, device = Path(args.run), torch.device(args.device)
    run.mkdir(parents=True, exist_ok=True)
    task = Numbers3Task(*train_digits())
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    unet, scheduler = build_numbers3(task)
    unet.to(device).train()
    acp = scheduler.alphas_cumprod.float().to(device)

    def batch_loss() -> torch.Tensor:
        x0, cls = task.sample(rng, args.batch_size, args.shift_prob)
        t = torch.from_numpy(rng.integers(0, 1000, args.batch_size)).to(device)
        eps = torch.randn_like(x0).to(device)  # drawn on the CPU: the same noise on every device
        x0 = x0.to(device)
        return F.mse_loss(unet(add_noise(acp, x0, eps, t), t, class_labels=cls.to(device)).sample, eps)

    train_resumable(args, "numbers3", unet, rng, batch_loss)
    export_numbers3(args, run, Path(args.out))


def load_checkpoint(args, run: Path, src: Path, model: str) -> tuple[dict, argparse.Namespace]:
    """A resumable run's checkpoint (or EMA snapshot) ``src``, and ``args`` updated with the run's own settings
    (an ``--export`` call may not repeat them)."""
    if not src.is_file():
        raise SystemExit(f"{src}: no checkpoint to export (train first: --model {model} --run {run})")
    ck = torch.load(src, weights_only=False, map_location="cpu")  # our own file, written by save_atomic
    saved = run / "args.json"
    args = argparse.Namespace(**{**vars(args), **(json.loads(saved.read_text()) if saved.is_file() else {})})
    return ck, args


def training_record(args, run: Path, ck: dict, command: str, **extra) -> dict:
    """diffcls.json's "training" of a resumable run exported at checkpoint ``ck``."""
    log = run / "loss.tsv"
    rows = [line.split("\t") for line in log.read_text().splitlines()] if log.is_file() else []
    curve = [[int(r[0]), float(r[1]), float(r[2])] for r in rows if int(r[0]) < ck["step"]]
    curve = [c for i, c in enumerate(curve) if i == len(curve) - 1 or c[0] % 500 == 0]
    return {
        "command": command,
        "steps": ck["step"],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "ema": args.ema,
        "shift_prob": args.shift_prob,
        "seed": args.seed,
        **extra,
        "torch": torch.__version__,
        "device": _device_name(torch.device(args.device)),
        "curve": curve,  # [step, smoothed loss, seconds in the session that ran it]
    }


def export_numbers3(args, run: Path, out: Path, snapshot: Path | None = None) -> None:
    """Write the model folder from the newest checkpoint (or an EMA snapshot): fp16 EMA weights, the class
    embedding as its plain table, ``classes.txt`` with the number words."""
    import shutil

    import diffusers

    src = snapshot or run / "ckpt.pt"
    ck, args = load_checkpoint(args, run, src, "numbers3")
    task = Numbers3Task  # its class attributes are all the export needs
    unet, scheduler = build_numbers3(task)
    with torch.no_grad():
        for p, e in zip(unet.parameters(), ck["ema"]):
            p.copy_(e)
        table = unet.class_embedding.table()
    unet.class_embedding = torch.nn.Embedding.from_pretrained(table, freeze=False)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    (out / "classes.txt").write_text("\n".join(task.class_names) + "\n")
    index = {
        "_class_name": "DDPMPipeline",  # diffusers has no class-conditional UNet pipeline; DDPM's has this layout
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    command = f"python scripts/train_bundled.py --model numbers3 --run RUN --steps {args.steps}"
    embedding = "trained factored (per position and digit, plus a per-class residual)"
    meta = {
        "name": "numbers3",
        "channels": 1,
        "resolution": list(task.resolution),
        "training": training_record(args, run, ck, command, class_embedding=embedding),
    }
    (out / "diffcls.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"exported step {ck['step']} ({src.name}) to {out}", flush=True)


# ---------------------------------------------------------------- numbers-flow: rectified flow, resumable

FLOW_OBJECTIVE = (
    "rectified flow: t uniform over the 1,000 timestep indices, sigma = (t + 1) / 1000,"
    " x_t = (1 - sigma) x0 + sigma eps, MSE(unet(x_t, sigma x 1000, text), eps - x0)"
)


def build_numbers_flow(task):
    """(tokenizer, {"unet", "text_encoder"} as one module, the FlowMatchEulerDiscreteScheduler at shift 1.0): the
    numbers architecture, initialised as numbers is from the same seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = build_tokenizer(task)
    text_encoder, unet, _ = build_models(len(tokenizer), tokenizer, task.resolution)
    nets = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    return tokenizer, nets, FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def train_numbers_flow(args) -> None:
    """Train (or resume) numbers-flow in ``args.run``, then export it to ``args.out``."""
    run, device = Path(args.run), torch.device(args.device)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = NumbersTask(*train_digits())
    tokenizer, nets, scheduler = build_numbers_flow(task)
    nets.to(device).train()
    ids = caption_ids(task, tokenizer, device)
    # σ per timestep index as the loader reads it from the saved config, and the network's timestep σ x T
    sigmas = flow_sigmas(dict(scheduler.config, _class_name=type(scheduler).__name__)).float().to(device)
    timestep_of = sigmas * sigmas.numel()

    def batch_loss() -> torch.Tensor:
        x0, cls = task.sample(rng, args.batch_size, args.shift_prob)
        tpl = torch.from_numpy(rng.integers(0, task.n_templates, args.batch_size))
        t = torch.from_numpy(rng.integers(0, sigmas.numel(), args.batch_size)).to(device)
        eps = torch.randn_like(x0).to(device)  # drawn on the CPU: the same noise on every device
        x0 = x0.to(device)
        cond = nets["text_encoder"](ids[cls.to(device), tpl.to(device)]).last_hidden_state
        s = sigmas[t].view(-1, 1, 1, 1)
        pred = nets["unet"]((1 - s) * x0 + s * eps, timestep_of[t], encoder_hidden_states=cond).sample
        return F.mse_loss(pred, eps - x0)

    train_resumable(args, "numbers-flow", nets, rng, batch_loss)
    export_numbers_flow(args, run, Path(args.out))


def export_numbers_flow(args, run: Path, out: Path, snapshot: Path | None = None) -> None:
    """Write the numbers-flow folder from the newest checkpoint (or an EMA snapshot): the numbers layout (fp16 EMA
    weights) with a FlowMatchEulerDiscreteScheduler config."""
    src = snapshot or run / "ckpt.pt"
    ck, args = load_checkpoint(args, run, src, "numbers-flow")
    task = NumbersTask(torch.empty(0), torch.empty(0))  # captions and metadata only
    tokenizer, nets, scheduler = build_numbers_flow(task)
    with torch.no_grad():
        for p, e in zip(nets.parameters(), ck["ema"]):
            p.copy_(e)
    command = f"python scripts/train_bundled.py --model numbers-flow --run RUN --steps {args.steps}"
    meta = {
        "name": "numbers-flow",
        "channels": 1,
        "class_names": task.class_names,
        **task.meta(),
        "training": training_record(args, run, ck, command, objective=FLOW_OBJECTIVE),
    }
    save(out, nets["unet"], nets["text_encoder"], tokenizer, scheduler, meta)
    print(f"exported step {ck['step']} ({src.name}) to {out}", flush=True)


RESUMABLE = {
    "numbers3": (train_numbers3, export_numbers3, NUMBERS3_STEPS, 64),
    "numbers-flow": (train_numbers_flow, export_numbers_flow, DEFAULT_STEPS, 128),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if _wants_fashion(argv):
        # a latent model with a frozen pretrained encoder and resumable stages: its own script (same folder)
        from train_fashion import main as train_fashion

        train_fashion(argv)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(TASKS) + ["numbers3", "numbers-flow", "fashion"]
    ap.add_argument("--model", choices=models, default="digits", help="which bundled model to train")
    ap.add_argument("--out", default=None, help="output folder (default: diffcls_fast/models/MODEL)")
    ap.add_argument("--steps", type=int, default=None, help=f"default {DEFAULT_STEPS} (numbers3: {NUMBERS3_STEPS})")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 (numbers3: 64)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift-prob", type=float, default=0.5)
    ap.add_argument("--save-every", type=int, default=0, help="also save EMA snapshots to OUT-stepN")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    # --model fashion is handed to train_fashion.py before this parser runs; listed here for --help
    resumable = ap.add_argument_group(
        "resumable runs: --model numbers3, numbers-flow and fashion (scripts/train_fashion.py --help lists"
        " fashion's options)"
    )
    resumable.add_argument(
        "--run", help="checkpoints, snapshots and loss logs; rerunning resumes from them (default: runs/MODEL)"
    )
    resumable.add_argument("--export", action="store_true", help="only write --out from the newest checkpoint")
    resumable.add_argument("--snapshot", default=None, help="with --export: an EMA snapshot file instead")
    resumable.add_argument("--checkpoint-minutes", type=float, default=4.0)
    resumable.add_argument("--snapshot-every", type=int, default=2000, help="steps between EMA snapshots")
    args = ap.parse_args(argv)
    args.out = args.out or f"diffcls_fast/models/{args.model}"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model in RESUMABLE:
        train, export, steps, batch_size = RESUMABLE[args.model]
        if args.save_every:
            ap.error(f"--save-every: {args.model} keeps EMA snapshots in RUN/snapshots (--snapshot-every)")
        args.steps, args.batch_size = args.steps or steps, args.batch_size or batch_size
        args.run = args.run or f"runs/{args.model}"
        if args.export:
            export(args, Path(args.run), Path(args.out), Path(args.snapshot) if args.snapshot else None)
        else:
            train(args)
        return
    if args.run or args.export or args.snapshot:
        ap.error("--run, --export and --snapshot are options of the resumable models (numbers3, numbers-flow, fashion)")
    args.steps, args.batch_size = args.steps or DEFAULT_STEPS, args.batch_size or 128
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = TASKS[args.model](*train_digits())

    tokenizer = build_tokenizer(task)
    text_encoder, unet, scheduler = build_models(len(tokenizer), tokenizer, task.resolution)
    n_params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in text_encoder.parameters())
    print(f"parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, total {n_params / 1e6:.2f}M")

    ids = caption_ids(task, tokenizer, device)
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
        cond = text_encoder(input_ids).last_hidden_state
        pred = unet(add_noise(acp, x0, eps, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        optimizer_step(opt, loss, params)
        ema_update(ema, params, step, args.ema)
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
