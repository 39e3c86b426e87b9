"""Cutting text into what the model translates: sentences, and parts of over-long sentences.

The model translates one sentence at a time; a sentence it receives with two in it may come back
with one missing. Sentences end at `.`, `!`, `?` or `…` before a space and a capital, a digit, an
opening quote or bracket, or a sentinel, unless the period ends an abbreviation ("e.g.", "Dr.")
or an initial ("J. Smith"); "OK." and "3.2." end sentences like any word. A line break always
ends one. Splitting works on a masked sentence (model/masking.py), so a URL or a placeholder,
already a sentinel, is never cut.

A sentence longer than the model's window is cut at its clause boundaries (`;`, `:`, `,`, a
dash), nearest the middle first, and failing those at the space nearest the middle, until every
part fits; each part is then translated alone and the parts joined in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Lower-cased words that a period follows without ending the sentence.
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "cf", "vs", "approx", "incl", "resp", "esp", "viz", "al", "ca", "fig", "figs", "no", "nos",
    "vol", "p", "pp", "ch", "sec", "ed", "eds", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "gen",
    "col", "lt", "sgt", "capt", "mt", "ft", "inc", "ltd", "co", "corp", "dept", "univ", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "a.m", "p.m", "u.s", "u.k",
})

# The end of a sentence: its punctuation and closing quotes or brackets, the space after it, and
# a look at what starts the next one.
_END = re.compile(r"(?:[.!?…]+)[\"'”’)\]»]*(?P<space>\s+)(?=[\"'“‘(\[«¿¡<]*[A-Z0-9ÁÉÍÓÚÑ<¿¡])")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_LINE_BREAK = re.compile(r"\s*\n\s*")
_CLAUSE = [re.compile(r"[;:](?=\s)"), re.compile(r",(?=\s)"), re.compile(r"\s[-–—](?=\s)")]


def sentence_ends(text: str) -> list[int]:
    """Offsets in `text` where a new sentence starts (after the spaces that end the previous one)."""
    ends = []
    for match in _END.finditer(text):
        if match.group().startswith(".") and _abbreviation_before(text, match.start()):
            continue
        ends.append(match.end("space"))
    ends += [m.end() for m in _LINE_BREAK.finditer(text) if 0 < m.start() and m.end() < len(text)]
    return sorted(set(ends))


def split_sentences(text: str) -> list[str]:
    """`text` cut at its sentence ends; the parts, joined, give `text` back."""
    cuts = [0, *sentence_ends(text), len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def _abbreviation_before(text: str, period: int) -> bool:
    match = _WORD_BEFORE.search(text[max(0, period - 20): period + 1])
    if match is None:
        return False
    word = match.group(1)
    if len(word) == 1 and word.isupper():
        return True  # an initial
    return word.lower().rstrip(".") in ABBREVIATIONS


def cut_to_fit(text: str, fits: Callable[[str], bool]) -> list[str]:
    """`text` in consecutive parts that each fit, cut at clause boundaries nearest the middle,
    else at spaces; a part with no space left is returned as it is (the caller refuses it).
    The parts, joined, give `text` back."""
    if fits(text):
        return [text]
    cut = _clause_cut(text) or _space_cut(text)
    if cut is None:
        return [text]
    return cut_to_fit(text[:cut], fits) + cut_to_fit(text[cut:], fits)


def clause_starts(text: str) -> list[int]:
    """Offsets in `text` where a clause starts: after `;`, `:`, `,` or a dash and the spaces
    that follow it."""
    return sorted({_after_space(text, m.end()) for pattern in _CLAUSE for m in pattern.finditer(text)
                   if 0 < m.end() < len(text.rstrip())})


def _clause_cut(text: str) -> int | None:
    middle = len(text) / 2
    for pattern in _CLAUSE:
        cuts = [m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text.rstrip())]
        # A cut that leaves almost all on one side gains little: keep the best of those that
        # leave at least a fifth of the text on each side.
        balanced = [c for c in cuts if len(text) / 5 <= c <= 4 * len(text) / 5]
        if balanced:
            return _after_space(text, min(balanced, key=lambda c: abs(c - middle)))
    return None


def _space_cut(text: str) -> int | None:
    middle = len(text) / 2
    spaces = [m.end() for m in re.finditer(r"\s+", text) if 0 < m.start() and m.end() < len(text)]
    return min(spaces, key=lambda c: abs(c - middle)) if spaces else None


def _after_space(text: str, cut: int) -> int:
    while cut < len(text) and text[cut].isspace():
        cut += 1
    return cut
