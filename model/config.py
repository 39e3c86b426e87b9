"""The model's shape, in one typed dataclass saved with every checkpoint and export."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# The special token ids, defined here once: the tokenizer is trained with them, and the model,
# the exported graphs and every decoder must agree on them.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the encoder-decoder Transformer, and the special token ids it was trained with."""

    vocab_size: int = 8000
    d_model: int = 256
    heads: int = 4
    ffn: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 3
    max_positions: int = 256  # longest source or target sequence, special tokens included
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0  # inside the FFN; off by default: on CPU each dropout mask costs real time
    norm_first: bool = True  # pre-norm trains stably without a long warmup; False gives post-norm
    tie_embeddings: bool = True  # one matrix for source, target and output (joint vocabulary)
    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        if self.d_model % self.heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if min(self.vocab_size, self.d_model, self.heads, self.ffn, self.max_positions) <= 0:
            raise ValueError("all sizes must be positive")
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ValueError("the encoder and decoder need at least one layer each")
        if not all(0.0 <= p < 1.0 for p in (self.dropout, self.attention_dropout, self.activation_dropout)):
            raise ValueError("dropout must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
