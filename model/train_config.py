"""How the model is trained: one typed dataclass, saved in the run's config.json and checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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
    cpu_bf16: bool = False  # bf16 autocast on CPU; see `model.device.cpu_has_bf16`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)
