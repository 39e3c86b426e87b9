"""Training throughput (target tokens/s) of the translation model on CPU, variant by variant.

Every variant trains the same model shape on the same real batches (token-count batches from
the training corpus), so the figures compare as ratios within one run:

    .venv/bin/python bench/train_speed.py --train data/en-es/train.tsv --steps 12

Variants: eager fp32, bf16 autocast, torch.compile, torch.compile + bf16. Each gets a few
warm-up steps (compilation happens there) before the timed ones. Results are printed and
written as JSON to bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from model.batching import collate, encode_pairs, token_batches
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.train import label_smoothed_loss
from model.transformer import Transformer
from model.tsv import read_tsv

VARIANTS = {
    "eager fp32": dict(compile=False, bf16=False),
    "eager bf16 autocast": dict(compile=False, bf16=True),
    "compile fp32": dict(compile=True, bf16=False),
    "compile bf16 autocast": dict(compile=True, bf16=True),
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def measure(config: ModelConfig, batches, *, compile: bool, bf16: bool, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = Transformer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if compile:
        # The loss calls forward_hidden, not forward, so that is the method to compile.
        model.forward_hidden = torch.compile(model.forward_hidden, dynamic=True)

    def step(batch) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, tokens = label_smoothed_loss(model, batch, 0.1)
        (loss / tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens

    start = time.perf_counter()
    for batch in batches[:warmup]:
        step(batch)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    tokens = sum(step(batch) for batch in batches[warmup:])
    seconds = time.perf_counter() - start
    return {"target_tokens_per_s": tokens / seconds, "timed_steps": len(batches) - warmup,
            "seconds": seconds, "warmup_seconds": warmup_seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="tokenizer.model; trained on the corpus when absent")
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=6000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--encoder-layers", type=int, default=4)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("bench/results/train_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    pairs, _ = read_tsv(args.train)
    if args.tokenizer:
        tokenizer = Tokenizer.load(args.tokenizer)
    else:
        tokenizer = Tokenizer.train((t for pair in pairs for t in pair), vocab_size=8000)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=args.d_model, heads=args.heads, ffn=args.ffn,
                         encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers)
    data = encode_pairs(pairs, tokenizer, config.max_positions)
    order = token_batches(data, args.max_tokens, seed=0)[: args.warmup + args.steps]
    batches = [collate(data, indices) for indices in order]
    results = {}
    for name in args.variants:
        results[name] = measure(config, batches, warmup=args.warmup, **VARIANTS[name])
        print(f"{name:24s} {results[name]['target_tokens_per_s']:8.0f} target tokens/s "
              f"(warm-up {results[name]['warmup_seconds']:.0f} s)", flush=True)
    report = {"machine": cpu_name(), "threads": args.threads, "torch": torch.__version__,
              "model": config.to_dict(), "max_tokens": args.max_tokens, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
