"""Encoded parallel data, length filtering and token-count batching.

Batches are bounded by tokens (padded size), not by sentences: sentences are sorted by length
with random tie-breaking, cut into batches of similar length, and the batch order is shuffled.
Padding stays low and every step does about the same amount of work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.config import BOS_ID, EOS_ID, PAD_ID
from model.tokenizer import Tokenizer


@dataclass
class EncodedPairs:
    """Token ids of parallel sentences: source ends with EOS; target has neither BOS nor EOS."""

    sources: list[list[int]]
    targets: list[list[int]]
    dropped_too_long: int = 0

    def __len__(self) -> int:
        return len(self.sources)


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: Tokenizer, max_length: int) -> EncodedPairs:
    """Encode pairs, dropping those whose source+EOS or BOS+target exceeds `max_length` tokens."""
    sources = tokenizer.encode_batch([s for s, _ in pairs])
    targets = tokenizer.encode_batch([t for _, t in pairs])
    kept_s, kept_t = [], []
    for s, t in zip(sources, targets):
        if len(s) + 1 <= max_length and len(t) + 1 <= max_length:
            kept_s.append(s + [EOS_ID])
            kept_t.append(t)
    return EncodedPairs(kept_s, kept_t, dropped_too_long=len(pairs) - len(kept_s))


def token_batches(data: EncodedPairs, max_tokens: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Indices of `data` grouped into batches of at most `max_tokens` padded tokens.

    The padded size of a batch is its sentence count times its longest source or target.
    Deterministic for a given seed, so a resumed run sees the same batches.
    """
    rng = np.random.default_rng(seed)
    src_len = np.array([len(s) for s in data.sources])
    tgt_len = np.array([len(t) + 1 for t in data.targets])
    width = np.maximum(src_len, tgt_len)
    noise = rng.random(len(width)) if shuffle else np.arange(len(width))
    order = np.lexsort((noise, width))  # by width, ties broken randomly
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        w = int(width[i])
        if current and max(longest, w) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(int(i))
        longest = max(longest, w)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    source: torch.Tensor  # (B, S) ids, EOS-terminated, right-padded
    target_in: torch.Tensor  # (B, T) BOS + target, right-padded
    target_out: torch.Tensor  # (B, T) target + EOS, right-padded

    def to(self, device: torch.device) -> Batch:
        return Batch(self.source.to(device), self.target_in.to(device), self.target_out.to(device))


def pad(sequences: list[list[int]]) -> torch.Tensor:
    """Right-pad id lists into a (B, max_len) int64 tensor."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def collate(data: EncodedPairs, indices: list[int]) -> Batch:
    sources = [data.sources[i] for i in indices]
    targets = [data.targets[i] for i in indices]
    return Batch(
        source=pad(sources),
        target_in=pad([[BOS_ID] + t for t in targets]),
        target_out=pad([t + [EOS_ID] for t in targets]),
    )
