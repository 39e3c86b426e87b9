"""Decoding options and the rules every decoder applies identically.

Both the PyTorch reference decoder (model/decoding.py) and the ONNX Runtime decoder in
server/ read these, so "the same options" means the same search. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeOptions:
    """How to search for a translation.

    beam_size: 1 is greedy search; more keeps that many hypotheses per sentence.
    length_penalty: hypotheses are ranked by log-probability / length**length_penalty
        (0 = raw log-probability, which favours short outputs; 1 = per-token average).
    min_length: generated tokens before EOS is allowed (EOS excluded from the count).
    max_length: most generated tokens, EOS included; None means `auto_max_length`.
    n_best: hypotheses returned per sentence, best first (at most beam_size).
    """

    beam_size: int = 1
    length_penalty: float = 1.0
    min_length: int = 0
    max_length: int | None = None
    n_best: int = 1

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({self.beam_size}), got {self.n_best}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.max_length is not None and self.min_length >= self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must be below max_length ({self.max_length})")
        if not 0.0 <= self.length_penalty <= 10.0:
            raise ValueError(f"length_penalty must be in [0, 10], got {self.length_penalty}")

    def target_limit(self, source_length: int, max_positions: int) -> int:
        """Most tokens (EOS included) to generate for a source of `source_length` ids (EOS included).

        Position 0 holds BOS, so at most max_positions - 1 tokens fit.
        """
        limit = self.max_length if self.max_length is not None else auto_max_length(source_length)
        return max(1, min(limit, max_positions - 1))


def auto_max_length(source_length: int) -> int:
    """Default output budget: translations rarely run past twice the source length."""
    return 2 * source_length + 10


def normalized_score(log_prob: float, length: int, length_penalty: float) -> float:
    """The score that ranks finished hypotheses."""
    return log_prob / (max(length, 1) ** length_penalty)
