"""A vocabulary shortlist from a parallel corpus (the contract: server/runtime/shortlist.py).

Each source token's candidates are the target tokens it most probably translates to under IBM
model 1 (word-translation probabilities t(target | source), estimated by expectation
maximisation over sentence pairs, started from co-occurrence), which ranks a word's
translations above the tokens that merely occur in the same sentences as it; the `frequent`
most frequent target tokens and the `always` ids are added to every list. Measured on the
default model (docs/benchmarks.md, `bench/shortlist_quality.py`).

Only co-occurring (source, target) pairs are stored, so memory follows the corpus, not the
vocabulary squared; sentence pairs are processed in chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from server.runtime import Shortlist

CHUNK = 4096  # sentence pairs per vectorised batch


def build_shortlist(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int, *,
                    per_source: int = 200, frequent: int = 500, always: Iterable[int] = (),
                    iterations: int = 3) -> Shortlist:
    """pairs: (source ids, target ids) of each sentence pair, as the tokenizer encodes them."""
    sets = [(np.unique(np.asarray(s, np.int64)), np.unique(np.asarray(t, np.int64))) for s, t in pairs]
    keys = np.unique(np.concatenate([_keys(chunk, vocab_size)[0] for chunk in _chunks(sets)]))
    probability = _normalised(keys, np.ones(len(keys)), vocab_size)
    for _ in range(iterations):
        probability = _normalised(keys, _expected_counts(sets, keys, probability, vocab_size), vocab_size)
    target_counts = np.bincount(np.concatenate([t for _, t in sets]), minlength=vocab_size)
    most_frequent = np.argsort(-target_counts, kind="stable")[:frequent]
    return Shortlist(always=np.unique(np.concatenate([most_frequent, np.asarray(list(always), np.int64)])),
                     **_top_per_source(keys, probability, vocab_size, per_source))


def _chunks(sets: list[tuple[np.ndarray, np.ndarray]]) -> Iterable[list[tuple[np.ndarray, np.ndarray]]]:
    for start in range(0, len(sets), CHUNK):
        yield sets[start: start + CHUNK]


def _keys(chunk: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (source, target) pair of each sentence pair as source * V + target, and each one's
    group: its sentence pair and target token (what the E step normalises over)."""
    keys, groups, group = [], [], 0
    for source, target in chunk:
        keys.append((source[:, None] * vocab_size + target[None, :]).ravel())
        groups.append(np.tile(np.arange(group, group + len(target)), len(source)))
        group += len(target)
    return np.concatenate(keys), np.concatenate(groups)


def _expected_counts(sets: list[tuple[np.ndarray, np.ndarray]], keys: np.ndarray, probability: np.ndarray,
                     vocab_size: int) -> np.ndarray:
    """The E step: each target token's alignment spread over its sentence's source tokens in
    proportion to t(target | source), summed per (source, target) pair."""
    counts = np.zeros(len(keys))
    for chunk in _chunks(sets):
        chunk_keys, groups = _keys(chunk, vocab_size)
        index = np.searchsorted(keys, chunk_keys)
        p = probability[index]
        posterior = p / np.bincount(groups, p)[groups]
        counts += np.bincount(index, posterior, minlength=len(keys))
    return counts


def _normalised(keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> np.ndarray:
    """The M step: t(target | source) = counts over the source's total."""
    source = keys // vocab_size
    return counts / np.bincount(source, counts, minlength=vocab_size)[source]


def _top_per_source(keys: np.ndarray, probability: np.ndarray, vocab_size: int, n: int) -> dict[str, np.ndarray]:
    """offsets and targets: each source token's n most probable targets."""
    source, target = keys // vocab_size, keys % vocab_size
    order = np.lexsort((target, -probability, source))  # by source, then most probable first
    source, target = source[order], target[order]
    starts = np.searchsorted(source, np.arange(vocab_size))
    rank = np.arange(len(source)) - starts[source]
    kept = rank < n
    offsets = np.concatenate([[0], np.cumsum(np.bincount(source[kept], minlength=vocab_size))])
    return {"offsets": offsets.astype(np.int64), "targets": target[kept].astype(np.int64)}
