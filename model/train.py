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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm  # tqdm.write: messages that do not break the bar

from model.batching import Batch, EncodedPairs, collate, encode_pairs, token_batches
from model.checkpoint import (Checkpoint, load_checkpoint, load_trainer_state, save_checkpoint, step_checkpoint,
                              step_checkpoints)
from model.config import PAD_ID, ModelConfig
from model.distributed import Distributed, process_group
from model.translate import translate_texts
from model.plot import plot_curves
from model.progress import progress_bar
from model.scoring import score_translations
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from model.tsv import read_tsv

log = logging.getLogger("rosetta.train")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about how the model is trained (the model's shape is in ModelConfig)."""

    source_lang: str = "en"
    target_lang: str = "es"
    max_tokens: int = 6000  # padded tokens per batch and process
    accumulation: int = 1  # batches per optimizer step
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 1500
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 40000
    max_length: int = 200  # pairs longer than this (in tokens) are left out of training
    seed: int = 1
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 250  # steps
    keep_checkpoints: int = 2
    valid_bleu_sentences: int = 400  # greedy-decoded for validation BLEU, spread evenly over the file; 0 = all
    amp: bool = True  # mixed precision on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU; see `cpu_has_bf16`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


def inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1, then decay as 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def label_smoothed_loss(model: Transformer, batch, label_smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed loss over real target tokens, and their count.

    Only non-padding positions go through the output projection, the largest matmul.
    """
    hidden = model.forward_hidden(batch.source, batch.target_in)  # (B, T, D)
    real = batch.target_out != PAD_ID
    logits = model.logits(hidden[real])  # (N, V)
    loss = F.cross_entropy(logits.float(), batch.target_out[real], label_smoothing=label_smoothing, reduction="sum")
    return loss, int(real.sum())


class TrainingLoss(torch.nn.Module):
    """`label_smoothed_loss` as a module's forward.

    DistributedDataParallel prepares its gradient all-reduce in the forward of the module it
    wraps, and the loss calls `forward_hidden` and `logits`, not `Transformer.forward`.
    """

    def __init__(self, model: Transformer, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        return label_smoothed_loss(self.model, batch, self.label_smoothing)


def evenly_spaced(items: list, n: int) -> list:
    """n items spread evenly over `items` (all of them if n is 0 or too large).

    A validation file often holds its domains one after the other; the first n lines would
    measure only the first domain.
    """
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively. There bf16 autocast trains about 1.3x faster
    (bench/train_speed.py); elsewhere it is emulated and slower, so it stays off."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the run saves and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Run:
    """One training run in its directory."""

    def __init__(self, run_dir: Path, model_config: ModelConfig, train_config: TrainConfig, tokenizer: Tokenizer,
                 train: EncodedPairs, valid_pairs: list[tuple[str, str]], device: torch.device,
                 dist: Distributed = Distributed()) -> None:
        self.dir = run_dir
        self.config = train_config
        self.tokenizer = tokenizer
        self.train = train
        self.valid_pairs = valid_pairs
        self.valid = encode_pairs(valid_pairs, tokenizer, model_config.max_positions)
        self.device = device
        self.dist = dist
        # Ranks differ in seed so that they draw different dropout masks; their initial weights
        # differ too, but DDP starts every rank from rank 0's.
        torch.manual_seed(train_config.seed + dist.rank)
        random.seed(train_config.seed)
        self.model = Transformer(model_config).to(device)
        self.training_loss = dist.wrap(TrainingLoss(self.model, train_config.label_smoothing))
        decay = [p for n, p in self.model.named_parameters() if p.dim() > 1 and "embedding" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() > 1 and "embedding" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=train_config.lr,
            betas=train_config.betas,
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: inverse_sqrt(step, train_config.warmup_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and train_config.amp)
        self.step = 0
        self.epoch = 0
        self.next_batch = 0  # index of the next batch in this epoch's order
        self.best_bleu = -1.0
        self.elapsed = 0.0  # training seconds over all sittings

    # -- state -------------------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        steps = step_checkpoints(self.checkpoint_dir())
        return steps[-1] if steps else None

    def info(self) -> dict[str, Any]:
        return {
            "source_lang": self.config.source_lang,
            "target_lang": self.config.target_lang,
            "step": self.step,
            "epoch": self.epoch,
            "best_valid_bleu": self.best_bleu,
            "train_seconds": round(self.elapsed, 1),
            "train_config": self.config.to_dict(),
        }

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0) and drop the oldest; every rank must call it."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            "step": self.step,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "best_bleu": self.best_bleu,
            "elapsed": self.elapsed,
        }
        if self.dist.enabled:
            # Each rank has its own dropout generator; an exact resume needs all of them.
            state["world_size"] = self.dist.world_size
            state["rank_rng"] = self.dist.gather({
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            })
        if not self.dist.is_main:
            self.dist.barrier()  # resuming needs the checkpoint complete before any rank goes on
            return None
        path = save_checkpoint(step_checkpoint(self.checkpoint_dir(), self.step), self.model, self.tokenizer, self.info(),
                               state)
        for old in step_checkpoints(self.checkpoint_dir())[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)
        self.dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        state = load_trainer_state(path)
        trained_by = state.get("world_size", 1)
        if trained_by != self.dist.world_size:
            raise SystemExit(f"{path} was trained by {trained_by} process(es), this is {self.dist.world_size}: the "
                             f"batches and the data position depend on that number. Resume with {trained_by} "
                             "(torchrun --nnodes x --nproc-per-node), or start a new run from it with --init-from")
        checkpoint = load_checkpoint(path, self.device)
        self.model.load_state_dict(checkpoint.model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if "rank_rng" in state:
            own = state["rank_rng"][self.dist.rank]
            torch.set_rng_state(own["torch"])
            if own["cuda"] is not None:
                torch.cuda.set_rng_state(own["cuda"], self.device)
        random.setstate(state["python_rng"])
        self.step, self.epoch, self.next_batch = state["step"], state["epoch"], state["next_batch"]
        self.best_bleu, self.elapsed = state["best_bleu"], state["elapsed"]

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append to metrics.jsonl; called on rank 0 only."""
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training ----------------------------------------------------------------------------
    def epoch_batches(self) -> list[list[int]]:
        """This epoch's global batches, the same on every rank; each rank trains its shard of them."""
        return token_batches(self.train, self.config.max_tokens * self.dist.world_size,
                             seed=self.config.seed * 100_003 + self.epoch)

    def autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.cpu_bf16)

    def train_step(self, batches: list[list[int]]) -> tuple[float, int]:
        """One optimizer step over global `batches` (gradient accumulation); this rank trains its
        shard of each. Returns the mean loss and the target tokens of the whole step."""
        self.model.train()
        shards = [self.dist.shard(b) for b in batches]
        # Each rank divides its summed loss by the whole step's target tokens (BOS-less target +
        # EOS per sentence), times the number of ranks that DDP then averages over: the gradient
        # is the one a single process gets from all the batches.
        total = sum(len(self.train.targets[i]) + 1 for b in batches for i in b)
        loss_sum = 0.0
        for n, (indices, weight) in enumerate(shards):
            # DDP all-reduces the gradients once, in the step's last backward.
            accumulate_only = self.dist.enabled and n < len(shards) - 1
            with self.training_loss.no_sync() if accumulate_only else nullcontext():
                with self.autocast():
                    loss, _ = self.training_loss(collate(self.train, indices).to(self.device))
                loss = loss * weight
                self.scaler.scale(loss * self.dist.world_size / total).backward()
            loss_sum += loss.item()
        loss_sum = self.dist.sum(loss_sum)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss_sum / total, total

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.model.eval()
        loss_sum, tokens = 0.0, 0
        for indices in token_batches(self.valid, self.config.max_tokens, seed=0, shuffle=False):
            loss, n = label_smoothed_loss(self.model, collate(self.valid, indices).to(self.device), 0.0)
            loss_sum, tokens = loss_sum + float(loss), tokens + n
        sample = evenly_spaced(self.valid_pairs, self.config.valid_bleu_sentences)
        hypotheses = translate_texts(self.model, self.tokenizer, [s for s, _ in sample], device=self.device)
        scores = score_translations(hypotheses, [t for _, t in sample])
        return {"step": self.step, "valid_loss": loss_sum / tokens, "valid_bleu": scores["bleu"],
                "valid_chrf": scores["chrf"], "valid_sentences": len(sample)}

    def run(self, max_minutes: float | None) -> str:
        """Train until max_steps, a stop signal, or max_minutes. Returns why it stopped."""
        config = self.config
        started = time.monotonic()
        last_log = time.monotonic()
        tokens_since_log, loss_since_log, steps_since_log = 0, 0.0, 0
        reason = "max_steps"
        progress = progress_bar(total=config.max_steps, initial=self.step, desc="train", unit="step",
                                disable=not self.dist.is_main)
        with StopRequest() as stop:
            while self.step < config.max_steps:
                batches = self.epoch_batches()
                while self.next_batch < len(batches) and self.step < config.max_steps:
                    group = batches[self.next_batch: self.next_batch + config.accumulation]
                    step_start = time.monotonic()
                    loss, tokens = self.train_step(group)
                    self.next_batch += len(group)
                    self.elapsed += time.monotonic() - step_start
                    tokens_since_log += tokens
                    loss_since_log += loss
                    steps_since_log += 1
                    progress.update(1)
                    if self.step % config.log_every == 0:
                        now = time.monotonic()
                        record = {"step": self.step, "epoch": self.epoch, "train_loss": loss_since_log / steps_since_log,
                                  "lr": self.scheduler.get_last_lr()[0],
                                  "target_tokens_per_s": tokens_since_log / (now - last_log)}
                        if self.dist.is_main:
                            self.log_metrics(record)
                        progress.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{record['lr']:.2e}",
                                             tok_s=f"{record['target_tokens_per_s']:.0f}")
                        last_log, tokens_since_log, loss_since_log, steps_since_log = now, 0, 0.0, 0
                    if self.step % config.eval_every == 0:
                        self.evaluate_and_keep_best()
                        last_log = time.monotonic()
                    if self.step % config.save_every == 0:
                        self.save()
                    if self.dist.any(stop.requested):
                        reason = "signal"
                        break
                    if self.dist.any(max_minutes is not None and time.monotonic() - started > max_minutes * 60):
                        reason = "max_minutes"
                        break
                if reason != "max_steps":
                    break
                if self.next_batch >= len(batches):
                    self.epoch += 1
                    self.next_batch = 0
        progress.close()
        if reason == "max_steps" and self.step % config.eval_every != 0:
            self.evaluate_and_keep_best()
        self.save()
        return reason

    def evaluate_and_keep_best(self) -> None:
        """Validate and keep the best checkpoint (rank 0); every rank must call it."""
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 validates meanwhile
            return
        record = self.validate()
        self.log_metrics(record)
        log.info("step %d: valid loss %.3f, BLEU %.2f, chrF %.2f", self.step, record["valid_loss"],
                 record["valid_bleu"], record["valid_chrf"])
        tqdm.write(f"step {self.step}: valid loss {record['valid_loss']:.3f} BLEU {record['valid_bleu']:.2f} "
                   f"chrF {record['valid_chrf']:.2f}")
        if record["valid_bleu"] > self.best_bleu:
            self.best_bleu = record["valid_bleu"]
            save_checkpoint(self.dir / "best", self.model, self.tokenizer, self.info() | {"valid": record})
        plot_curves(self.dir / "metrics.jsonl", self.dir / "curves.png")
        self.dist.barrier()


def build_parser() -> argparse.ArgumentParser:
    m, t = ModelConfig(), TrainConfig()
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: the machine's cores, divided among "
                                                "the processes torchrun starts on it)")
    p.add_argument("--max-minutes", type=float, help="stop (after saving) once this much wall time has passed")
    p.add_argument("--dist-backend", choices=["auto", "nccl", "gloo"], default="auto",
                   help="collectives between the processes torchrun starts; auto = nccl on CUDA, gloo on CPU")
    g = p.add_argument_group("model (fixed at the first start of a run)")
    for name in ("vocab_size", "d_model", "heads", "ffn", "encoder_layers", "decoder_layers", "max_positions"):
        g.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(m, name))
    g.add_argument("--dropout", type=float, default=m.dropout)
    g.add_argument("--attention-dropout", type=float, default=m.attention_dropout)
    g.add_argument("--activation-dropout", type=float, default=m.activation_dropout)
    g.add_argument("--post-norm", action="store_true", help="post-norm layers instead of pre-norm")
    g.add_argument("--untied", action="store_true", help="separate source, target and output embeddings")
    g = p.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("betas", "amp", "cpu_bf16"):
            continue
        g.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(t, f.name)), default=getattr(t, f.name))
    g.add_argument("--no-amp", action="store_true", help="full fp32 on CUDA")
    g.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast on CPU; auto = where the CPU has native bf16 (AVX512-BF16 or AMX)")
    return p


def say(dist: Distributed, message: str) -> None:
    """A line for the person running the command, printed once per run (by rank 0)."""
    if dist.is_main:
        print(message, file=sys.stderr)


def load_corpus(path: Path, dist: Distributed) -> list[tuple[str, str]]:
    pairs, report = read_tsv(path)
    log.warning(report.summary()) if report.malformed else log.info(report.summary())
    say(dist, report.summary())
    if not pairs:
        raise SystemExit(f"{path}: no usable pairs")
    return pairs


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    with process_group(args.dist_backend, pick_device(args.device)) as dist:
        if not dist.is_main:
            logging.getLogger("rosetta").setLevel(logging.ERROR)  # rank 0 reports the warnings, once
        return train_process(args, dist)


def train_process(args: argparse.Namespace, dist: Distributed) -> int:
    """The run as this process does it: alone, or as one rank of several started by torchrun."""
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // dist.local_world_size))
    device = dist.device
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    train_config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                  if f.name not in ("betas", "amp", "cpu_bf16")},
                               amp=not args.no_amp,
                               cpu_bf16=args.cpu_bf16 == "on" or (args.cpu_bf16 == "auto" and cpu_has_bf16()))
    train_pairs = load_corpus(args.train, dist)
    valid_pairs = load_corpus(args.valid, dist)
    config_file = run_dir / "config.json"
    if args.init_from and args.tokenizer:
        raise SystemExit("--init-from brings its own tokenizer; drop --tokenizer")
    # Rank 0 creates the run (tokenizer, config.json) while the others wait; they then open it as
    # a resumed run, so every rank has the same tokenizer and model config.
    if not dist.is_main:
        dist.barrier()
        if not config_file.exists():
            raise SystemExit(f"rank {dist.rank} does not see {config_file}, written by rank 0: --out must be on a "
                             "filesystem that every machine of the run shares")
    init_from: Checkpoint | None = None
    if config_file.exists():
        saved = json.loads(config_file.read_text())
        model_config = ModelConfig.from_dict(saved["model"])
        tokenizer = Tokenizer.load(run_dir / "tokenizer.model")
        if saved.get("init_from"):
            init_from = load_checkpoint(saved["init_from"])
        say(dist, f"resuming run in {run_dir} (model config from {config_file})")
    elif args.init_from:
        init_from = load_checkpoint(args.init_from)
        tokenizer, model_config = init_from.tokenizer, init_from.config
        tokenizer.save(run_dir / "tokenizer.model")
        config_file.write_text(json.dumps({"model": model_config.to_dict(), "train": train_config.to_dict(),
                                           "init_from": str(args.init_from.resolve())}, indent=2) + "\n")
    else:
        if args.tokenizer:
            tokenizer = Tokenizer.load(args.tokenizer)
        else:
            say(dist, f"training a {args.vocab_size}-piece tokenizer on {len(train_pairs)} pairs")
            tokenizer = Tokenizer.train((text for pair in train_pairs for text in pair), vocab_size=args.vocab_size)
        model_config = ModelConfig(
            vocab_size=tokenizer.vocab_size, d_model=args.d_model, heads=args.heads, ffn=args.ffn,
            encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
            max_positions=args.max_positions, dropout=args.dropout, attention_dropout=args.attention_dropout,
            activation_dropout=args.activation_dropout,
            norm_first=not args.post_norm, tie_embeddings=not args.untied,
        )
        tokenizer.save(run_dir / "tokenizer.model")
        config_file.write_text(json.dumps({"model": model_config.to_dict(), "train": train_config.to_dict()}, indent=2) + "\n")
    if dist.is_main:
        dist.barrier()
    train = encode_pairs(train_pairs, tokenizer, min(train_config.max_length, model_config.max_positions))
    say(dist, f"{len(train)} training pairs ({train.dropped_too_long} longer than {train_config.max_length} tokens "
              "left out)")
    run = Run(run_dir, model_config, train_config, tokenizer, train, valid_pairs, device, dist)
    latest = run.latest_checkpoint()
    if latest is not None:
        run.resume(latest)
        say(dist, f"resumed from {latest}: step {run.step}, epoch {run.epoch}, lr {run.scheduler.get_last_lr()[0]:.3e}")
    elif init_from is not None:
        run.model.load_state_dict(init_from.model.state_dict())
        say(dist, f"starting from the weights of {init_from.path}")
    processes = f" x {dist.world_size} processes" if dist.enabled else ""
    say(dist, f"model: {run.model.num_parameters():,} parameters on {device}{processes}")
    reason = run.run(args.max_minutes)
    say(dist, f"stopped at step {run.step} ({reason}); best valid BLEU {run.best_bleu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
