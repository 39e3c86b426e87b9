"""Data-parallel training: two CPU processes under torchrun train what one process trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.batching import encode_pairs, token_batches
from model.checkpoint import load_checkpoint, load_trainer_state
from model.config import ModelConfig
from model.distributed import Distributed
from model.resume import ResumeError, check_world_size
from model.run import Run
from model.tokenizer import Tokenizer
from model.train import main
from model.train_config import TrainConfig
from model.tsv import write_tsv
from tests.builders import tiny_pairs
from tests.test_training import args_with

pytestmark = pytest.mark.slow  # training processes under torchrun (pytest -m "not slow" skips them)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 9  # one epoch of the corpus below (8 global batches) and the first step of the next
PER_RANK_TOKENS = 40


def corpus_pairs() -> list[tuple[str, str]]:
    """The tiny pairs plus one three times as long, which fills a global batch alone: that step
    leaves rank 1 without a sentence of its own (`Distributed.shard`)."""
    pairs = tiny_pairs()
    return pairs + [(" ".join(s for s, _ in pairs[:3]), " ".join(t for _, t in pairs[:3]))]


def run_args(data: Path, out: Path, max_tokens: int, max_steps: int) -> list[str]:
    """The tiny model's flags (dropout and label smoothing off, fp32), a log line every step."""
    return ["--train", str(data / "train.tsv"), "--valid", str(data / "valid.tsv"), "--out", str(out),
            *args_with(max_tokens=max_tokens, max_steps=max_steps, log_every=1, threads=1),
            # Clipping off (gradient norms here are 2 to 4): a clipped gradient has the same norm at
            # any scale, and the test compares the optimizer's moments to see the scale.
            "--clip-norm", "100", "--valid-bleu-sentences", "2"]


def torchrun(args: list[str], logs: Path) -> None:
    """rosetta-train in two Gloo processes on this CPU; each rank's stdout/stderr go under `logs`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--log-dir", str(logs), "--redirects", "3", "-m", "model.train", *args, "--device", "cpu"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        worker_logs = "".join(f"--- {p}\n{p.read_text()}" for p in sorted(logs.rglob("*.log")))
        pytest.fail(f"torchrun exited with {done.returncode}\n{done.stderr}\n{worker_logs}")


def rank_stderr(logs: Path, rank: int) -> str:
    (path,) = logs.rglob(f"{rank}/stderr.log")
    return path.read_text()


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def key_bias(name: str, d_model: int) -> slice | None:
    """The part of an attention input bias that adds to the keys (see the tolerance below)."""
    if name.endswith("attention.qkv.bias"):
        return slice(d_model, 2 * d_model)
    if name.endswith("cross_attention.kv.bias"):
        return slice(0, d_model)
    return None


def test_shards_are_disjoint_cover_the_batch_and_never_leave_a_rank_idle():
    batch = list(range(10, 17))
    for world_size in (1, 2, 3, 7, 8):
        shards = [Distributed(rank=r, world_size=world_size).shard(batch) for r in range(world_size)]
        assert {weight for _, weight in shards} <= {0.0, 1.0}
        real = [indices for indices, weight in shards if weight == 1.0]
        assert len(real) == min(world_size, len(batch))
        assert sorted(i for indices in real for i in indices) == batch  # disjoint, and the whole batch
        assert max(map(len, real)) - min(map(len, real)) <= 1
        assert all(indices for indices, _ in shards)  # every rank has a forward and backward to run
    assert Distributed(rank=1, world_size=2).shard([5]) == ([5], 0.0)


def test_a_checkpoint_resumes_only_with_as_many_processes_as_trained_it(tmp_path):
    check_world_size(tmp_path, {"world_size": 2}, Distributed(rank=1, world_size=2))
    check_world_size(tmp_path, {}, Distributed())  # a single process's checkpoint records no world size
    with pytest.raises(ResumeError, match="trained by 2 process\\(es\\), this is 1"):
        check_world_size(tmp_path, {"world_size": 2}, Distributed())
    with pytest.raises(ResumeError, match="trained by 1 process\\(es\\), this is 4"):
        check_world_size(tmp_path, {}, Distributed(rank=0, world_size=4))


def test_two_processes_train_the_same_parameters_as_one(tmp_path):
    """One process with batches of 2B tokens and two with B each: same data, seed and steps, dropout
    off; the second run is stopped after 4 steps and resumed.

    What could go wrong in sharding or gradient averaging, and what here catches it (each was
    tried by breaking the code, and each fails this test):
    - ranks training the same sentences or missing some, ranks not averaged (rank 0 would keep its
      own update), each rank's loss divided by its own token count (the shards here differ in
      tokens), batches of B rather than 2B per step: the update changes direction, and the
      parameters move by about the learning rate (1e-4 at step 1), 100 times the tolerance;
    - gradients off by a constant factor (the ranks' sum where DDP takes their mean, or every rank
      training the whole global batch instead of its shard): Adam divides most of the scale out
      of its update (the parameters move by about 1e-5, just above the tolerance), but its
      moments keep it, and the training loss, summed over ranks, doubles when every rank trains
      every sentence.
    """
    data, single, parallel = tmp_path / "corpus", tmp_path / "single", tmp_path / "parallel"
    data.mkdir()
    pairs = corpus_pairs()
    write_tsv(data / "train.tsv", pairs)
    write_tsv(data / "valid.tsv", pairs)
    assert main(run_args(data, single, 2 * PER_RANK_TOKENS, STEPS)) == 0

    tokenizer = Tokenizer.load(single / "tokenizer.model")
    first_epoch = token_batches(encode_pairs(pairs, tokenizer, max_length=64), 2 * PER_RANK_TOKENS,
                                seed=TrainConfig().seed * 100_003)
    assert len(first_epoch) == STEPS - 1 and any(len(b) == 1 for b in first_epoch), "the corpus lost its lone batch"

    # Two sittings: stopped at step 4 and resumed, as a rerun of the same command does.
    common = ["--tokenizer", str(single / "tokenizer.model")]
    torchrun(run_args(data, parallel, PER_RANK_TOKENS, 4) + common, tmp_path / "logs-1")
    assert load_trainer_state(parallel / "checkpoints" / "step-4")["world_size"] == 2
    torchrun(run_args(data, parallel, PER_RANK_TOKENS, STEPS) + common, tmp_path / "logs-2")

    # The shards' sums are added in another order than the whole batch's, so fp32 results differ
    # in the last bits (observed: 1e-7, a few ulps of weights near 1); 1e-6 leaves room for other
    # CPUs' kernels and is still far below the learning rate that a wrong update moves a weight by
    # (1e-4 at the first step here). Key biases are left out: a constant added to every key leaves
    # softmax unchanged, so their gradient is zero but for rounding noise, which Adam scales up to
    # learning-rate-sized steps in both runs alike.
    one = load_checkpoint(single / "checkpoints" / f"step-{STEPS}")
    b = load_checkpoint(parallel / "checkpoints" / f"step-{STEPS}").model.state_dict()
    for name, p in one.model.state_dict().items():
        q = b[name]
        if (keys := key_bias(name, one.config.d_model)) is not None:
            p, q = p.clone(), q.clone()
            p[keys] = q[keys] = 0
        assert torch.allclose(p, q, rtol=0, atol=1e-6), (name, (p - q).abs().max().item())
    # Adam's moments, relative to each tensor's largest (observed: 1e-6, the rounding above squared
    # in exp_avg_sq); a gradient scaled by 2 would move them by half or more.
    moments = [load_trainer_state(run / "checkpoints" / f"step-{STEPS}")["optimizer"]["state"]
               for run in (single, parallel)]
    for index, state in moments[0].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            x, y = state[moment], moments[1][index][moment]
            assert (x - y).abs().max() <= 1e-4 * x.abs().max(), (index, moment)
    # Same losses step by step (float32 sums in another order: relative 1e-6).
    assert train_losses(parallel) == pytest.approx(train_losses(single), rel=1e-6)

    # Rank 0 alone logs: one record per step and one validation per sitting, none twice.
    records = [json.loads(line) for line in (parallel / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "valid_bleu" in r] == [4, STEPS]
    for logs in (tmp_path / "logs-1", tmp_path / "logs-2"):
        assert "stopped at step" in rank_stderr(logs, 0)
        assert "stopped at step" not in rank_stderr(logs, 1) and "training pairs" not in rank_stderr(logs, 1)


class Rank1Alone(Distributed):
    """Rank 1 of 2 with its collectives answered locally: to see what a rank other than 0 writes."""

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def barrier(self) -> None:
        pass

    def sum(self, value: float) -> float:
        return value

    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, value):
        return [value] * self.world_size


def test_ranks_other_than_0_write_nothing(tmp_path):
    """Checkpoints, metrics, the best model and the plot are rank 0's; rank 1 runs the same loop."""
    tokenizer = Tokenizer.train((text for pair in tiny_pairs(8) for text in pair), vocab_size=300)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, heads=4, ffn=64, encoder_layers=1,
                         decoder_layers=1, max_positions=64, dropout=0.0)
    train = encode_pairs(tiny_pairs(8), tokenizer, 64)
    run = Run(tmp_path, config, TrainConfig(max_steps=2, log_every=1, save_every=1, eval_every=1, max_tokens=100),
              tokenizer, train, tiny_pairs(2), torch.device("cpu"), Rank1Alone(rank=1, world_size=2))
    assert run.run(max_minutes=None) == "max_steps" and run.step == 2
    assert list(tmp_path.iterdir()) == []
