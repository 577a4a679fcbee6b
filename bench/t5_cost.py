"""What encoding many class prompts with T5 costs (SD3/SD3.5, PixArt, Flux), counted, and timed where it fits.

python -m bench.t5_cost [--classes 1000] [--time-layers 2]

T5-v1.1-XXL's encoder (the one SD3, PixArt and Flux ship: d_model 4096, 24 layers, 64 heads, d_ff 10240,
4.76 B parameters) is built on the meta device, so its FLOPs per prompt are counted exactly at each token
length without any weights. One prompt is one forward at the family's length (SD3 256 tokens, PixArt-alpha
120, PixArt-Sigma 300, Flux-dev 512, Flux-schnell 256): padding tokens cost as much as words. The same
encoder cut to ``--time-layers`` layers is then timed on this CPU with random weights, per prompt, and scaled
to 24 layers; a GPU estimate is the FLOPs at a stated fraction of the device's bf16 matmul rate.

Encoding happens once per class list: the embedding cache keeps every prompt's rows on disk (keyed by the
model's text encoders, docs/api.md), so a 1,000-class run pays it once, not per image.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.common import environment, write_json

XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128)
LENGTHS = {"PixArt-alpha": 120, "SD3 / SD3.5, Flux-schnell": 256, "PixArt-Sigma": 300, "Flux-dev": 512}
H100_BF16_DENSE = 989e12  # spec sheet, FLOP/s
GPU_FRACTION = 0.4  # an encoder forward at batch 64 reaches well under the matmul peak


def encoder(layers: int, device: str):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(**(XXL | {"num_layers": layers}), feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    with torch.device(device):
        return T5EncoderModel(cfg).eval()


def flops_per_prompt(tokens: int) -> tuple[int, int]:
    """(FLOPs of one prompt's forward, parameters) of the full XXL encoder, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = encoder(XXL["num_layers"], "meta")
    ids = torch.zeros((1, tokens), dtype=torch.long, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids)
    return fc.get_total_flops(), sum(p.numel() for p in model.parameters())


def cpu_seconds_per_prompt(tokens: int, layers: int, batch: int = 4) -> float:
    """Seconds per prompt of the full encoder on this CPU, from ``layers`` timed layers (random weights)."""
    model = encoder(layers, "cpu")
    ids = torch.randint(0, XXL["vocab_size"], (batch, tokens))
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        t0 = time.perf_counter()
        model(input_ids=ids)
        seconds = time.perf_counter() - t0
    return seconds / batch * XXL["num_layers"] / layers


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--time-layers", type=int, default=2, help="encoder layers timed on the CPU (0: skip timing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for family, tokens in LENGTHS.items():
        flops, params = flops_per_prompt(tokens)
        cpu = cpu_seconds_per_prompt(tokens, args.time_layers) if args.time_layers else None
        gpu = flops / (H100_BF16_DENSE * GPU_FRACTION)
        row = {
            "family": family,
            "tokens": tokens,
            "gflops_per_prompt": flops / 1e9,
            "encoder_parameters": params,
            "cpu_seconds_per_prompt": cpu,
            "h100_seconds_per_prompt_estimate": gpu,
            "classes": args.classes,
            "cpu_minutes_for_classes": None if cpu is None else cpu * args.classes / 60,
            "h100_seconds_for_classes_estimate": gpu * args.classes,
        }
        rows.append(row)
        cpu_text = (
            "not timed" if cpu is None else f"{cpu:.1f} s/prompt on this CPU ({row['cpu_minutes_for_classes']:.0f} min)"
        )
        print(
            f"{family:<26} {tokens:>3} tokens: {flops / 1e12:.2f} TFLOP/prompt; {args.classes} classes:"
            f" {cpu_text}; H100 estimate {row['h100_seconds_for_classes_estimate']:.1f} s",
            flush=True,
        )
    payload = {
        "benchmark": "t5_cost",
        **environment("cpu"),
        "threads": args.threads,
        "gpu_assumption": f"{GPU_FRACTION:.0%} of the H100's {H100_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 dense",
        "load_average": os.getloadavg(),
        "results": rows,
    }
    if not args.no_save:
        name = f"t5_cost_cpu_{payload['date']}.json"
        print(f"wrote {write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
