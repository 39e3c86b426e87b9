"""The training loop of one run in its directory: steps, logging, validation, checkpoints.

With several processes (model/distributed.py) every rank runs this same loop on its shard of
each step's batches; rank 0 alone validates and writes files, and the others wait for it at
the same points.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm  # tqdm.write: messages that do not break the bar

from model.batching import EncodedPairs, collate, encode_pairs, token_batches
from model.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint, step_checkpoint, step_checkpoints
from model.config import ModelConfig
from model.device import autocast
from model.distributed import Distributed
from model.loss import TrainingLoss
from model.optimizer import Optimization
from model.plot import plot_curves
from model.progress import progress_bar
from model.resume import check_world_size, keep_newest, restore_rng, rng_state
from model.signals import StopRequest
from model.tokenizer import Tokenizer
from model.train_config import TrainConfig
from model.transformer import Transformer
from model.validation import validate

log = logging.getLogger("rosetta.train")

# The run's place in its data and its record so far: saved with every checkpoint, by these names.
POSITION = ("step", "epoch", "next_batch", "best_bleu", "elapsed")


@dataclass
class LogWindow:
    """Training steps since the last log line: their mean loss and their target tokens per second."""

    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    loss: float = 0.0
    tokens: int = 0

    def add(self, loss: float, tokens: int) -> None:
        self.steps, self.loss, self.tokens = self.steps + 1, self.loss + loss, self.tokens + tokens

    def close(self) -> tuple[float, float]:
        """The window's mean loss and tokens per second; the next window starts now."""
        now = time.monotonic()
        mean, rate = self.loss / self.steps, self.tokens / (now - self.started)
        self.started, self.steps, self.loss, self.tokens = now, 0, 0.0, 0
        return mean, rate


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
        self.optimization = Optimization(self.model, train_config, device)
        self.step = 0
        self.epoch = 0
        self.next_batch = 0  # index of the next batch in this epoch's order
        self.best_bleu = -1.0
        self.elapsed = 0.0  # training seconds over all sittings

    # -- state -------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

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
        state = {**self.optimization.state_dict(), **rng_state(self.dist, self.device),
                 **{name: getattr(self, name) for name in POSITION}}
        if not self.dist.is_main:
            self.dist.barrier()  # resuming needs the checkpoint complete before any rank goes on
            return None
        path = save_checkpoint(step_checkpoint(self.checkpoint_dir, self.step), self.model, self.tokenizer,
                               self.info(), state)
        keep_newest(self.checkpoint_dir, self.config.keep_checkpoints)
        self.dist.barrier()
        return path

    def latest_checkpoint(self) -> Path | None:
        steps = step_checkpoints(self.checkpoint_dir)
        return steps[-1] if steps else None

    def resume(self, path: Path) -> None:
        """Continue from the periodic checkpoint at `path` exactly where it was saved."""
        state = load_trainer_state(path)
        check_world_size(path, state, self.dist)
        self.model.load_state_dict(load_checkpoint(path, self.device).model.state_dict())
        self.optimization.load_state_dict(state)
        restore_rng(state, self.dist, self.device)
        for name in POSITION:
            setattr(self, name, state[name])

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append to metrics.jsonl; called on rank 0 only."""
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- training ----------------------------------------------------------------------------
    def epoch_batches(self) -> list[list[int]]:
        """This epoch's global batches, the same on every rank; each rank trains its shard of them."""
        return token_batches(self.train, self.config.max_tokens * self.dist.world_size,
                             seed=self.config.seed * 100_003 + self.epoch)

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
            loss_sum += self._backward(indices, weight, total, accumulate_only)
        loss_sum = self.dist.sum(loss_sum)
        self.optimization.step(self.model.parameters())
        self.step += 1
        return loss_sum / total, total

    def _backward(self, indices: list[int], weight: float, total: int, accumulate_only: bool) -> float:
        """Forward and backward of this rank's shard `indices`; returns its weighted summed loss."""
        with self.training_loss.no_sync() if accumulate_only else nullcontext():
            with autocast(self.device, self.config):
                loss, _ = self.training_loss(collate(self.train, indices).to(self.device))
            loss = loss * weight
            self.optimization.backward(loss * self.dist.world_size / total)
        return loss.item()

    def run(self, max_minutes: float | None) -> str:
        """Train until max_steps, a stop signal, or max_minutes. Returns why it stopped."""
        started = time.monotonic()
        progress = progress_bar(total=self.config.max_steps, initial=self.step, desc="train", unit="step",
                                disable=not self.dist.is_main)
        with StopRequest() as stop:
            reason = self._train(lambda: self._stop_reason(stop, started, max_minutes), progress)
        progress.close()
        if reason == "max_steps" and self.step % self.config.eval_every != 0:
            self.evaluate_and_keep_best()
        self.save()
        return reason

    def _train(self, stop_reason: Callable[[], str | None], progress: tqdm) -> str:
        """Steps through the epochs' batches until max_steps or until `stop_reason` gives one."""
        window = LogWindow()
        while self.step < self.config.max_steps:
            batches = self.epoch_batches()
            while self.next_batch < len(batches) and self.step < self.config.max_steps:
                self._train_group(batches[self.next_batch: self.next_batch + self.config.accumulation], window,
                                  progress)
                if reason := stop_reason():
                    return reason
            if self.next_batch >= len(batches):
                self.epoch, self.next_batch = self.epoch + 1, 0
        return "max_steps"

    def _train_group(self, group: list[list[int]], window: LogWindow, progress: tqdm) -> None:
        """One optimizer step over `group`, then what falls due at its step: a log line, validation,
        a checkpoint."""
        step_start = time.monotonic()
        loss, tokens = self.train_step(group)
        self.next_batch += len(group)
        self.elapsed += time.monotonic() - step_start
        window.add(loss, tokens)
        progress.update(1)
        if self.step % self.config.log_every == 0:
            self._log_train(window, progress)
        if self.step % self.config.eval_every == 0:
            self.evaluate_and_keep_best()
            window.started = time.monotonic()  # the throughput counts training time only
        if self.step % self.config.save_every == 0:
            self.save()

    def _log_train(self, window: LogWindow, progress: tqdm) -> None:
        loss, tokens_per_s = window.close()
        record = {"step": self.step, "epoch": self.epoch, "train_loss": loss, "lr": self.optimization.lr,
                  "target_tokens_per_s": tokens_per_s}
        if self.dist.is_main:
            self.log_metrics(record)
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tokens_per_s:.0f}")

    def _stop_reason(self, stop: StopRequest, started: float, max_minutes: float | None) -> str | None:
        """Why to stop after this step, if at all; the same on every rank."""
        if self.dist.any(stop.requested):
            return "signal"
        if self.dist.any(max_minutes is not None and time.monotonic() - started > max_minutes * 60):
            return "max_minutes"
        return None

    def evaluate_and_keep_best(self) -> None:
        """Validate and keep the best checkpoint (rank 0); every rank must call it."""
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 validates meanwhile
            return
        record = {"step": self.step,
                  **validate(self.model, self.tokenizer, self.valid, self.valid_pairs, self.config, self.device)}
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
