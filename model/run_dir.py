"""What a run directory fixes at its first start: the model config, the tokenizer and, when
fine-tuning, the checkpoint it started from. config.json and tokenizer.model hold them; every
later start of the same run reads them back instead of the command's flags."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import Checkpoint, load_checkpoint
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.train_config import TrainConfig

RUN_CONFIG = "config.json"
RUN_TOKENIZER = "tokenizer.model"


class RunDirError(ValueError):
    """The run directory cannot be used as asked."""


@dataclass
class RunStart:
    """What a run trains: its model config and tokenizer, and the checkpoint it starts from, if any."""

    model_config: ModelConfig
    tokenizer: Tokenizer
    init_from: Checkpoint | None = None


def read_run(run_dir: Path) -> RunStart | None:
    """The run started earlier in `run_dir`, or None if it holds none."""
    config_file = run_dir / RUN_CONFIG
    if not config_file.exists():
        return None
    saved = json.loads(config_file.read_text())
    model_config = ModelConfig.from_dict(saved["model"])
    tokenizer = Tokenizer.load(run_dir / RUN_TOKENIZER)
    init_from = load_checkpoint(saved["init_from"]) if saved.get("init_from") else None
    return RunStart(model_config, tokenizer, init_from)


def create_run(run_dir: Path, start: RunStart, train_config: TrainConfig) -> None:
    """Write what `read_run` reads back: the tokenizer, then config.json."""
    start.tokenizer.save(run_dir / RUN_TOKENIZER)
    document = {"model": start.model_config.to_dict(), "train": train_config.to_dict()}
    if start.init_from is not None:
        document["init_from"] = str(start.init_from.path.resolve())
    (run_dir / RUN_CONFIG).write_text(json.dumps(document, indent=2) + "\n")
