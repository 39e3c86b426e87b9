"""Checkpoints: a directory per checkpoint, written atomically, loaded without unpickling code.

Layout of a checkpoint directory:
    model.safetensors   weights (tied matrices stored once)
    config.json         model config, languages, step and metrics
    tokenizer.model     the SentencePiece model the weights were trained with
    trainer.pt          optional: optimizer, scheduler, RNG and data position, for resuming
                        (plain tensors and numbers; loaded with weights_only=True)

A directory is first written under a temporary name and then renamed, so a run killed while
saving leaves the previous checkpoint intact and never a half-written one.

A published model version (models/<name>/<N>/, written by export/) loads as a checkpoint too:
its graphs share one weights file in this same format, named in its manifest.json, so training
can start from what is served without a checkpoint kept beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.fsync import fsync_file
from model.tokenizer import Tokenizer
from model.transformer import Transformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.model"
TRAINER = "trainer.pt"
MANIFEST = "manifest.json"  # what makes a directory a published model version


@dataclass
class Checkpoint:
    model: Transformer
    tokenizer: Tokenizer
    info: dict[str, Any] = field(default_factory=dict)  # languages, step, metrics, ...
    path: Path | None = None
    weights: Path | None = None  # the file the weights came from

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared (tied) tensor stored under its first name only."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    info: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one at `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in unique_state_dict(model).items()}
        save_file({k: v.cpu() for k, v in weights.items()}, tmp / WEIGHTS)
        document = {"model": model.config.to_dict(), **info, "weights_dtype": str(dtype).removeprefix("torch.")}
        (tmp / CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        tokenizer.save(tmp / TOKENIZER)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER)
        for f in tmp.iterdir():
            fsync_file(f)
        if path.exists():
            # Move the old one aside first: a rename over a non-empty directory is not allowed.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "c")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load model (as float32, eval mode), tokenizer and info from a checkpoint directory or a
    published fp32/fp16 model version."""
    path = Path(path)
    if (path / CONFIG).is_file():
        document = json.loads((path / CONFIG).read_text())
        weights_file, tokenizer_file = path / WEIGHTS, path / TOKENIZER
    elif (path / MANIFEST).is_file():
        document, weights_file, tokenizer_file = _published_version(path)
    else:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory (no {CONFIG}) nor a model version "
                                f"(no {MANIFEST})")
    config = ModelConfig.from_dict(document.pop("model"))
    model = Transformer(config)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in load_file(weights_file).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if name.startswith("target_embedding.") and config.tie_embeddings}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {sorted(set(missing) - tied)}, unexpected {unexpected})")
    model.to(device).eval()
    return Checkpoint(model=model, tokenizer=Tokenizer.load(tokenizer_file), info=document, path=path,
                      weights=weights_file)


def _published_version(path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A model version's checkpoint document (model config, languages, the step and metrics of the
    checkpoint it was exported from), weights file and tokenizer, after checking both files
    against the manifest's checksums."""
    manifest = json.loads((path / MANIFEST).read_text())
    if not manifest.get("weights"):
        raise ValueError(f"{path}: its graphs hold their own weights (exported before versions shared one weights "
                         f"file); start from the checkpoint it was exported from, {manifest['source_checkpoint']['path']}")
    if manifest["precision"] == "int8":
        raise ValueError(f"{path}: an int8 version holds its matmul weights quantized; start from an fp32 or fp16 "
                         "version, or from a checkpoint")
    for name in (manifest["weights"], manifest["tokenizer"]):
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        if digest != manifest["files"][name]["sha256"]:
            raise ValueError(f"{path}: {name} does not match its checksum in {MANIFEST} (corrupted or replaced)")
    source = manifest["source_checkpoint"]
    document = {"model": manifest["model"], "source_lang": manifest["source_lang"],
                "target_lang": manifest["target_lang"], "step": source.get("step"), "valid": source.get("valid", {}),
                "version": {"name": manifest["name"], "version": manifest["version"], "precision": manifest["precision"]}}
    return document, path / manifest["weights"], path / manifest["tokenizer"]


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAINER, map_location="cpu", weights_only=True)


def step_checkpoint(directory: Path, step: int) -> Path:
    """Where a run keeps its periodic checkpoint of `step`."""
    return directory / f"step-{step}"


def step_checkpoints(directory: Path) -> list[Path]:
    """A run's periodic checkpoints in `directory`, by step, oldest first."""
    return sorted(directory.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
