"""Splitting a text into sentences and joining translations back with the original spacing.

The model translates sentences; users send paragraphs. `sentencex` (a maintained segmenter
for ~300 languages) splits, keeping each sentence's trailing whitespace, so the text is
exactly the concatenation of its segments. Each segment becomes (leading space, sentence,
trailing space); translations are put back between the same spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sentencex import segment

T = TypeVar("T")


@dataclass(frozen=True)
class Segment:
    before: str  # whitespace before the sentence
    sentence: str  # the sentence, stripped
    after: str  # whitespace after it


def split(text: str, language: str) -> list[Segment]:
    """The sentences of `text` with their surrounding whitespace; whitespace-only parts are dropped
    (their spacing is kept in the neighbouring segment)."""
    segments: list[Segment] = []
    pending = ""
    for part in segment(language, text):
        core = part.strip()
        if not core:
            pending += part
            continue
        start = part.index(core)
        segments.append(Segment(pending + part[:start], core, part[start + len(core):]))
        pending = ""
    if pending and segments:
        last = segments[-1]
        segments[-1] = Segment(last.before, last.sentence, last.after + pending)
    return segments


def join(segments: list[Segment], translations: list[str]) -> str:
    """The translated text: each sentence's translation between its original spaces."""
    return "".join(s.before + t + s.after for s, t in zip(segments, translations, strict=True))


def split_by_lengths(items: Sequence[T], lengths: Sequence[int]) -> list[list[T]]:
    """`items` cut back into consecutive groups of the given lengths (sentences back into texts or
    requests after they were decoded together)."""
    if sum(lengths) != len(items):
        raise ValueError(f"{len(items)} items cannot be split into groups of {sum(lengths)}")
    groups, start = [], 0
    for length in lengths:
        groups.append(list(items[start: start + length]))
        start += length
    return groups
