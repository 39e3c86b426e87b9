"""Finding the spans of a text that must come out of translation exactly as they went in.

Placeholders (printf, brace, shell and LibreOffice styles), URLs, e-mail addresses, file paths,
text that already looks like a sentinel, and runs of characters the tokenizer cannot spell (an
emoji, a private-use character) are found by `protected_spans`; the caller adds its own
do-not-translate strings and glossary terms. Training data and the server's text path use the
same rules, so the model learns to carry exactly what the server hides from it.

This module must not import torch: the runtime uses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from model.sentinels import SENTINEL_PATTERN

# The patterns, by kind. Each is written so that ordinary prose does not match: `50% of` is not a
# printf conversion (no space flag), `and/or` is not a path (a path starts at `/`, `~/`, `./` or a
# drive letter), a lone `$` or `{` is text.
_PATTERNS: dict[str, str] = {
    "sentinel": SENTINEL_PATTERN.pattern,
    "url": r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}»]",
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    # Before printf, which would take the `%F` of `%FOLDER` for a conversion.
    "named": r"%[A-Z][A-Z0-9_]*(?![a-z])%?|#[A-Z][A-Z0-9_]*#",
    "printf": r"%(?:[0-9]+\$)?[-+#0']*(?:[0-9]+|\*)?(?:\.(?:[0-9]+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn@]"
              r"|%%",
    "numbered": r"%[0-9]+\b",
    "brace": r"\{\{[^{}\s]*\}\}|\{[A-Za-z0-9_.:!\[\]#-]*\}",
    "shell": r"\$\{[^{}\s]+\}|\$\([^()\s]+\)|\$[A-Z_][A-Z0-9_]*\b",
    "path": r"(?<![\w/.~-])(?:~|\.{1,2})?/[\w.+-]+(?:/[\w.+-]+)*/?|\b[A-Za-z]:\\[^\s<>\"']+",
}
_PATTERN = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _PATTERNS.items()))

# Characters that join or modify the one before them; they belong to the unknown run they follow
# (an emoji with a skin tone, a flag, a family joined by ZWJ).
_JOINERS = frozenset("\u200d\ufe0e\ufe0f") | frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))


@dataclass(frozen=True)
class Span:
    """`text[start:end]` is protected; `output` is what the translation must hold in its place
    (the same text, or a glossary term's required translation)."""

    start: int
    end: int
    output: str
    kind: str


def protected_spans(text: str, known: Callable[[str], bool]) -> list[Span]:
    """The spans found by the built-in rules; `known(char)` says whether the tokenizer can spell a
    character (an unknown run is kept verbatim rather than garbled as bytes)."""
    spans = [Span(m.start(), m.end(), m.group(), m.lastgroup or "") for m in _PATTERN.finditer(text)]
    return spans + _unknown_runs(text, known)


def literal_spans(text: str, literals: Iterable[str], *, kind: str) -> list[Span]:
    """Every occurrence of each literal (the caller's do-not-translate strings), case-sensitive."""
    spans = []
    for literal in literals:
        if literal:
            spans += [Span(m.start(), m.end(), m.group(), kind) for m in re.finditer(re.escape(literal), text)]
    return spans


def term_spans(text: str, terms: Iterable[tuple[str, str]]) -> list[Span]:
    """Each whole-word, case-insensitive occurrence of a glossary source term, to be replaced by
    the term's target."""
    spans = []
    for source, target in terms:
        if source.strip():
            pattern = re.compile(rf"(?<!\w){re.escape(source.strip())}(?!\w)", re.IGNORECASE)
            spans += [Span(m.start(), m.end(), target, "glossary") for m in pattern.finditer(text)]
    return spans


def non_overlapping(spans: Iterable[Span]) -> list[Span]:
    """The spans to protect, in text order: where two overlap, the one starting first wins, and of
    two starting together the longer (a URL over the path inside it)."""
    chosen: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if span.end > span.start and (not chosen or span.start >= chosen[-1].end):
            chosen.append(span)
    return chosen


def _unknown_runs(text: str, known: Callable[[str], bool]) -> list[Span]:
    runs: list[Span] = []
    start = None
    for i, char in enumerate(text):
        unknown = not known(char) and not char.isspace()
        if unknown or (start is not None and char in _JOINERS):
            start = i if start is None else start
            continue
        if start is not None:
            runs.append(Span(start, i, text[start:i], "symbol"))
            start = None
    if start is not None:
        runs.append(Span(start, len(text), text[start:], "symbol"))
    return runs
