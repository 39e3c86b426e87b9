"""Training: checkpoints, resuming, bad input lines, the schedule, and the run's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint, step_checkpoints
from model.optimizer import inverse_sqrt
from model.train import main
from model.tsv import TsvError, read_tsv
from model.tsv import evenly_spaced
from tests.builders import random_batch, tiny_pairs
from tests.conftest import TINY_MODEL_ARGS


def args_with(**overrides) -> list[str]:
    """TINY_MODEL_ARGS with some values replaced."""
    args = list(TINY_MODEL_ARGS)
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        args[args.index(flag) + 1] = str(value)
    return args


def train(corpus: Path, out: Path, *extra: str, **overrides) -> int:
    return main(["--train", str(corpus / "train.tsv"), "--valid", str(corpus / "valid.tsv"), "--out", str(out),
                 *args_with(**overrides), *extra])


def test_run_writes_checkpoints_metrics_and_plot(tiny_run):
    assert (tiny_run / "best" / "model.safetensors").is_file()
    assert (tiny_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [50, 100, 150, 200, 250]
    final = [r for r in records if "valid_bleu" in r][-1]
    assert final["step"] == 250 and final["valid_bleu"] == pytest.approx(100.0)
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[-1] < losses[0] / 10


def test_checkpoint_round_trip_gives_identical_outputs(tiny_checkpoint, tmp_path):
    original = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "copy", original.model, original.tokenizer, {"note": "copy"})
    copy = load_checkpoint(tmp_path / "copy")
    src = random_batch([7, 4], vocab=original.config.vocab_size)
    tgt = random_batch([5, 5], vocab=original.config.vocab_size, seed=3)
    assert torch.equal(original.model(src, tgt), copy.model(src, tgt))
    assert copy.config == original.config and copy.info["note"] == "copy"
    assert copy.tokenizer.to_bytes() == original.tokenizer.to_bytes()


def test_fp16_storage_halves_the_file_and_stays_close(tiny_checkpoint, tmp_path):
    original = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "half", original.model, original.tokenizer, {}, dtype=torch.float16)
    half = load_checkpoint(tmp_path / "half")
    full_size = (tiny_checkpoint / "model.safetensors").stat().st_size
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * full_size
    src = random_batch([7], vocab=original.config.vocab_size)
    tgt = random_batch([5], vocab=original.config.vocab_size, seed=3)
    # fp16 keeps ~3 significant digits of each weight; logits of this size move by well under 0.05.
    assert (original.model(src, tgt) - half.model(src, tgt)).abs().max().item() < 0.05


def test_failed_save_leaves_the_previous_checkpoint_intact(tiny_checkpoint, tmp_path, monkeypatch):
    original = load_checkpoint(tiny_checkpoint)
    target = save_checkpoint(tmp_path / "ckpt", original.model, original.tokenizer, {"version": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(original.tokenizer, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(target, original.model, original.tokenizer, {"version": 2})
    assert load_checkpoint(target).info["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_stopped_run_resumes_at_the_same_step_and_learning_rate(tiny_corpus, tmp_path):
    """Training 40 steps straight and training 25, stopping, then resuming to 40 end identically."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = dict(max_steps=40, save_every=5, dropout=0.1, max_tokens=300, log_every=5)
    assert train(tiny_corpus, straight, **common) == 0
    assert train(tiny_corpus, resumed, "--max-minutes", "0", **common) == 0  # stops after its first step
    first_stop = load_trainer_state(resumed / "checkpoints" / "step-1")
    assert first_stop["step"] == 1
    assert train(tiny_corpus, resumed, **{**common, "max_steps": 25}) == 0
    state_25 = load_trainer_state(resumed / "checkpoints" / "step-25")
    assert state_25["scheduler"]["last_epoch"] == 25
    assert train(tiny_corpus, resumed, **common) == 0
    a, b = load_checkpoint(straight / "checkpoints" / "step-40"), load_checkpoint(resumed / "checkpoints" / "step-40")
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6), name
    lr = [json.loads(line)["lr"] for line in (straight / "metrics.jsonl").read_text().splitlines() if "lr" in line]
    lr_resumed = [json.loads(line)["lr"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
                  if "lr" in line]
    assert lr_resumed[-3:] == lr[-3:]


def test_bad_tsv_lines_are_counted_not_fatal(tmp_path, capsys):
    lines = ["good one\tbuena una", "no tab here", "three\tcolumns\there", "\tempty source", "", "fine\tbien"]
    (tmp_path / "train.tsv").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\tbroken utf8\n")
    pairs, report = read_tsv(tmp_path / "train.tsv")
    assert pairs == [("good one", "buena una"), ("fine", "bien")]
    assert report.malformed_total == 5
    assert report.malformed["not UTF-8"] == 1 and report.malformed["empty line"] == 1
    assert "skipped 5 malformed" in report.summary() and "line 2" in report.summary()
    with pytest.raises(TsvError, match="line 2"):
        read_tsv(tmp_path / "train.tsv", strict=True)


def test_training_cli_reports_and_skips_bad_lines(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = "".join(f"{s}\t{t}\n" for s, t in tiny_pairs(8))
    (corpus / "train.tsv").write_text(good + "broken line\n\tno source\n")
    (corpus / "valid.tsv").write_text(good)
    assert train(corpus, tmp_path / "run", max_steps=2) == 0
    assert "skipped 2 malformed" in capsys.readouterr().err


def test_bf16_autocast_training_learns(tiny_corpus, tmp_path):
    """The CPU bf16 path (on by default where the CPU has bf16 units) trains, not just runs."""
    assert train(tiny_corpus, tmp_path / "bf16", max_steps=60, log_every=10, **{"cpu_bf16": "on"}) == 0
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in line]
    assert len(losses) == 6 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] / 2


def test_init_from_starts_with_the_checkpoint_weights_and_tokenizer(tiny_checkpoint, tiny_corpus, tmp_path, capsys):
    """Fine-tuning: one step at a negligible learning rate keeps what the tiny model memorised."""
    out = tmp_path / "finetune"
    assert train(tiny_corpus, out, "--init-from", str(tiny_checkpoint), lr="1e-9", max_steps=1,
                 vocab_size=999, d_model=32) == 0  # shape flags are ignored: the checkpoint decides
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["valid_bleu"] == pytest.approx(100.0)
    original, tuned = load_checkpoint(tiny_checkpoint), load_checkpoint(out / "best")
    assert tuned.config == original.config
    assert tuned.tokenizer.to_bytes() == original.tokenizer.to_bytes()
    capsys.readouterr()
    assert train(tiny_corpus, tmp_path / "both", "--init-from", str(tiny_checkpoint), "--tokenizer",
                 str(tiny_checkpoint / "tokenizer.model")) == 1
    assert "--init-from brings its own tokenizer" in capsys.readouterr().err


def test_step_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    for step in (100, 9, 10):
        (tmp_path / f"step-{step}").mkdir()
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-9", "step-10", "step-100"]


def test_init_from_a_published_version_starts_with_its_weights(tiny_version, tiny_checkpoint, tiny_corpus, tmp_path):
    """A version's shared weights file is a checkpoint's: training starts from exactly what is served."""
    out = tmp_path / "from-version"
    assert train(tiny_corpus, out, "--init-from", str(tiny_version), max_steps=0) == 0
    start = load_checkpoint(out / "checkpoints" / "step-0")  # the weights before the first step
    for source in (load_checkpoint(tiny_version), load_checkpoint(tiny_checkpoint)):
        assert start.config == source.config and start.tokenizer.to_bytes() == source.tokenizer.to_bytes()
        expected = source.model.state_dict()
        assert all(torch.equal(tensor, expected[name]) for name, tensor in start.model.state_dict().items())
    # The same command with more steps resumes that run and trains on.
    assert train(tiny_corpus, out, "--init-from", str(tiny_version), max_steps=2) == 0
    trained = load_checkpoint(out / "checkpoints" / "step-2").model.state_dict()
    assert not all(torch.equal(tensor, trained[name]) for name, tensor in start.model.state_dict().items())


def test_validation_sample_spans_the_whole_file():
    items = list(range(1000))
    assert evenly_spaced(items, 4) == [0, 250, 500, 750]
    assert evenly_spaced(items, 0) == items and evenly_spaced(items[:3], 10) == [0, 1, 2]


def test_learning_rate_warms_up_then_decays():
    assert inverse_sqrt(1, 100) == pytest.approx(0.01)
    assert inverse_sqrt(100, 100) == pytest.approx(1.0)
    assert inverse_sqrt(400, 100) == pytest.approx(0.5)
