"""A vocabulary shortlist: the target tokens a sentence may produce, known from its source.

At one row the decoder step is bound by reading its weights, and the output projection is the
largest of them (the default model: 8 of 19 MB in fp32). Restricted to the tokens that a
sentence's source words translate to, plus the most frequent target tokens, the special ids and
the source's own tokens (what the model copies: names, numbers, sentinels), the projection reads
a fraction of its rows (docs/benchmarks.md). Its lists come from the training corpus
(export/shortlist.py) and are saved with the model version; this is CTranslate2's "vmap" idea.

A step over several sentences computes the union of their lists, and each row's
log-probabilities cover its own sentence's list only (`restriction`): a sentence's translation
does not depend on what else is in flight. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.runtime.graph_io import MAX_CANDIDATES, RULED

SHORTLIST_FILE = "shortlist.npz"
# A step ranks each row's best k + RULED tokens of its vocabulary: every list holds at least that many.
LEAST_ALWAYS = MAX_CANDIDATES + RULED


@dataclass(frozen=True)
class Shortlist:
    """always: sorted target ids every sentence may produce (the frequent ones, the specials).
    offsets, targets: source id s's candidate target ids are targets[offsets[s]:offsets[s + 1]]
    (offsets has vocab_size + 1 entries)."""

    always: np.ndarray
    offsets: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.targets) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("a shortlist's offsets must rise from 0 to the number of its targets")
        if len(self.always) < LEAST_ALWAYS:
            raise ValueError(f"a shortlist lists {len(self.always)} tokens for every sentence; a step ranks the best "
                             f"{LEAST_ALWAYS}: list more frequent ones")

    @property
    def vocab_size(self) -> int:
        return len(self.offsets) - 1

    def for_source(self, ids: Sequence[int]) -> np.ndarray:
        """The sorted target ids a sentence with source `ids` may produce."""
        listed = np.zeros(self.vocab_size, bool)  # a mask, not a sort: this runs as each sentence joins
        listed[self.always] = True
        listed[ids] = True
        for s in set(ids):
            listed[self.targets[self.offsets[s]: self.offsets[s + 1]]] = True
        return np.flatnonzero(listed)

    def save(self, path: str | Path) -> None:
        """Ids in the narrowest integer type that holds the vocabulary, compressed: the file ships
        with the version."""
        ids = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name without it
            np.savez_compressed(f, always=self.always.astype(ids), offsets=self.offsets,
                                targets=self.targets.astype(ids))

    @classmethod
    def load(cls, path: str | Path) -> Shortlist:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[name].astype(np.int64) for name in ("always", "offsets", "targets")))


def restriction(lists: Sequence[np.ndarray], rows: Sequence[Sequence[int]], batch: int,
                vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A step's vocabulary (the sorted union of `lists`, each sorted) and `allowed` (batch,
    len(vocabulary)): row r may produce vocabulary[j] where its sentence's list holds it;
    rows[i] are the rows of sentence i (its beams). Rows of no sentence allow everything (their
    results are unread)."""
    if len(lists) == 1:
        vocabulary = lists[0]
    else:
        listed = np.zeros(vocab_size, bool)
        for own in lists:
            listed[own] = True
        vocabulary = np.flatnonzero(listed)
    column = np.zeros(vocab_size, np.int64)
    column[vocabulary] = np.arange(len(vocabulary))
    allowed = np.ones((batch, len(vocabulary)), bool)
    for own, sentence_rows in zip(lists, rows):
        allowed[sentence_rows] = False
        allowed[np.ix_(sentence_rows, column[own])] = True
    return vocabulary, allowed
