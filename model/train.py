"""`rosetta-train`: train the translation model on TSV parallel text, resumably.

A run lives in one directory:
    config.json           model and training configuration of the run
    tokenizer.model       trained on the first start (or copied from --tokenizer)
    checkpoints/step-N/   periodic checkpoints with optimizer, scheduler, RNG and data position
    best/                 the checkpoint with the best validation BLEU so far
    metrics.jsonl         one JSON object per log line (train) and per validation
    curves.png            loss, BLEU and learning rate so far

Starting the same command again resumes from the newest checkpoint: same step, same learning
rate, the same batches in the same order. SIGINT/SIGTERM save a checkpoint before exiting, so
a stopped run loses nothing; a killed one loses at most the work since its last checkpoint.

Started by torchrun with several processes, the run is data-parallel (model/distributed.py):
each step's global batches are built from --max-tokens times the number of processes and split
among them; rank 0 alone prints, logs, validates and writes the run directory.

This module is the command: its flags, and the order in which a process opens the run
(model/run_dir.py) and trains it (model/run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch

from model.batching import EncodedPairs, encode_pairs
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.device import DeviceError, cpu_has_bf16, pick_device
from model.distributed import Distributed, process_group
from model.resume import ResumeError
from model.run import Run
from model.run_dir import RUN_CONFIG, RunDirError, RunStart, create_run, read_run
from model.tokenizer import Tokenizer
from model.transformer import with_vocabulary
from model.train_config import TrainConfig
from model.tsv import TsvError, read_tsv

log = logging.getLogger("rosetta.train")

# Why a run cannot start or go on as asked: `main` prints the message and exits 1.
RUN_ERRORS = (DeviceError, ResumeError, RunDirError, TsvError)
# TrainConfig fields that have no flag of their own, or a differently shaped one (--no-amp, --cpu-bf16).
NOT_FLAGS = ("betas", "amp", "cpu_bf16")
SHAPE_FLAGS = ("vocab_size", "d_model", "heads", "ffn", "encoder_layers", "decoder_layers", "max_positions")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the translation model. Re-running the same command resumes from the newest checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train", type=Path, required=True, help="training pairs, TSV: source<TAB>target")
    p.add_argument("--valid", type=Path, required=True, help="validation pairs, TSV: source<TAB>target")
    p.add_argument("--out", type=Path, required=True, help="run directory (created, or resumed if it holds checkpoints)")
    p.add_argument("--tokenizer", type=Path, help="an existing tokenizer.model to use instead of training one")
    p.add_argument("--init-from", type=Path,
                   help="start from this checkpoint's weights, tokenizer and model config (fine-tuning, e.g. the "
                        "default model on your own corpus); the model-shape flags are then ignored")
    p.add_argument("--sentinels", action="store_true",
                   help="with --init-from: add the sentinel tokens (model/sentinels.py) to its tokenizer, with new "
                        "embedding rows, to fine-tune it on masked text (make data's train.format.tsv)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: the machine's cores, divided among "
                                                "the processes torchrun starts on it)")
    p.add_argument("--max-minutes", type=float, help="stop (after saving) once this much wall time has passed")
    p.add_argument("--dist-backend", choices=["auto", "nccl", "gloo"], default="auto",
                   help="collectives between the processes torchrun starts; auto = nccl on CUDA, gloo on CPU")
    add_model_flags(p)
    add_training_flags(p)
    return p


def add_model_flags(p: argparse.ArgumentParser) -> None:
    m, g = ModelConfig(), p.add_argument_group("model (fixed at the first start of a run)")
    for name in SHAPE_FLAGS:
        g.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(m, name))
    g.add_argument("--dropout", type=float, default=m.dropout)
    g.add_argument("--attention-dropout", type=float, default=m.attention_dropout)
    g.add_argument("--activation-dropout", type=float, default=m.activation_dropout)
    g.add_argument("--post-norm", action="store_true", help="post-norm layers instead of pre-norm")
    g.add_argument("--untied", action="store_true", help="separate source, target and output embeddings")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    t, g = TrainConfig(), p.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NOT_FLAGS:
            g.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(t, f.name)), default=getattr(t, f.name))
    g.add_argument("--no-amp", action="store_true", help="full fp32 on CUDA")
    g.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast on CPU; auto = where the CPU has native bf16 (AVX512-BF16 or AMX)")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                          if f.name not in NOT_FLAGS},
                       amp=not args.no_amp,
                       cpu_bf16=args.cpu_bf16 == "on" or (args.cpu_bf16 == "auto" and cpu_has_bf16()))


def model_config_from(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, d_model=args.d_model, heads=args.heads, ffn=args.ffn,
        encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        max_positions=args.max_positions, dropout=args.dropout, attention_dropout=args.attention_dropout,
        activation_dropout=args.activation_dropout,
        norm_first=not args.post_norm, tie_embeddings=not args.untied,
    )


def say(dist: Distributed, message: str) -> None:
    """A line for the person running the command, printed once per run (by rank 0)."""
    if dist.is_main:
        print(message, file=sys.stderr)


def load_corpus(path: Path, dist: Distributed) -> list[tuple[str, str]]:
    """The usable pairs of a TSV file; malformed lines are skipped and reported."""
    pairs, report = read_tsv(path)
    log.warning(report.summary()) if report.malformed else log.info(report.summary())
    say(dist, report.summary())
    if not pairs:
        raise TsvError(f"{path}: no usable pairs")
    return pairs


def open_run(args: argparse.Namespace, dist: Distributed, train_pairs: list[tuple[str, str]],
             train_config: TrainConfig) -> RunStart:
    """The run in --out, created by rank 0 at its first start.

    The other ranks wait meanwhile, then open it as a resumed run, so every rank has the same
    tokenizer and model config.
    """
    if args.init_from and args.tokenizer:
        raise RunDirError("--init-from brings its own tokenizer; drop --tokenizer")
    if not dist.is_main:
        dist.barrier()
    start = read_run(args.out)
    if start is not None:
        say(dist, f"resuming run in {args.out} (model config from {args.out / RUN_CONFIG})")
    elif not dist.is_main:
        raise RunDirError(f"rank {dist.rank} does not see {args.out / RUN_CONFIG}, written by rank 0: --out must be "
                          "on a filesystem that every machine of the run shares")
    else:
        start = new_run(args, dist, train_pairs)
        create_run(args.out, start, train_config)
    if dist.is_main:
        dist.barrier()
    return start


def new_run(args: argparse.Namespace, dist: Distributed, train_pairs: list[tuple[str, str]]) -> RunStart:
    """What a run starts from at its first start: the --init-from checkpoint, or the shape flags and
    a tokenizer (--tokenizer, or trained on the training pairs)."""
    if args.init_from:
        checkpoint = load_checkpoint(args.init_from)
        if not args.sentinels:
            return RunStart(checkpoint.config, checkpoint.tokenizer, checkpoint)
        tokenizer = checkpoint.tokenizer.with_sentinels()
        say(dist, f"adding sentinels: {checkpoint.tokenizer.vocab_size} -> {tokenizer.vocab_size} pieces")
        return RunStart(dataclasses.replace(checkpoint.config, vocab_size=tokenizer.vocab_size), tokenizer, checkpoint)
    if args.sentinels:
        raise RunDirError("--sentinels extends an --init-from checkpoint; a new run gets them with --tokenizer")
    if args.tokenizer:
        tokenizer = Tokenizer.load(args.tokenizer)
    else:
        say(dist, f"training a {args.vocab_size}-piece tokenizer on {len(train_pairs)} pairs")
        tokenizer = Tokenizer.train((text for pair in train_pairs for text in pair), vocab_size=args.vocab_size)
    return RunStart(model_config_from(args, tokenizer.vocab_size), tokenizer)


def encode_training_pairs(pairs: list[tuple[str, str]], start: RunStart, config: TrainConfig,
                          dist: Distributed) -> EncodedPairs:
    train = encode_pairs(pairs, start.tokenizer, min(config.max_length, start.model_config.max_positions))
    say(dist, f"{len(train)} training pairs ({train.dropped_too_long} longer than {config.max_length} tokens "
              "left out)")
    return train


def place_weights(run: Run, start: RunStart, dist: Distributed) -> None:
    """Resume from the run's newest checkpoint, or else start from the --init-from weights."""
    latest = run.latest_checkpoint()
    if latest is not None:
        run.resume(latest)
        say(dist, f"resumed from {latest}: step {run.step}, epoch {run.epoch}, lr {run.optimization.lr:.3e}")
    elif start.init_from is not None:
        run.model.load_state_dict(with_vocabulary(start.init_from.model.state_dict(), run.model.config.vocab_size))
        say(dist, f"starting from the weights of {start.init_from.path}")


def train_process(args: argparse.Namespace, dist: Distributed) -> int:
    """The run as this process does it: alone, or as one rank of several started by torchrun."""
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // dist.local_world_size))
    args.out.mkdir(parents=True, exist_ok=True)
    train_config = train_config_from(args)
    train_pairs, valid_pairs = load_corpus(args.train, dist), load_corpus(args.valid, dist)
    start = open_run(args, dist, train_pairs, train_config)
    train = encode_training_pairs(train_pairs, start, train_config, dist)
    run = Run(args.out, start.model_config, train_config, start.tokenizer, train, valid_pairs, dist.device, dist)
    place_weights(run, start, dist)
    processes = f" x {dist.world_size} processes" if dist.enabled else ""
    say(dist, f"model: {run.model.num_parameters():,} parameters on {dist.device}{processes}")
    reason = run.run(args.max_minutes)
    say(dist, f"stopped at step {run.step} ({reason}); best valid BLEU {run.best_bleu:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        with process_group(args.dist_backend, pick_device(args.device)) as dist:
            if not dist.is_main:
                logging.getLogger("rosetta").setLevel(logging.ERROR)  # rank 0 reports the warnings, once
            return train_process(args, dist)
    except RUN_ERRORS as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
