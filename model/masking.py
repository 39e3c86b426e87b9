"""A sentence as the model sees it: its words, with sentinels in place of what it must not touch.

A sentence is a sequence of pieces: text, protected spans, and inline tags. `mask` writes it as
one string for the model and numbers the sentinels (placeholders in order of appearance, tag
pairs in order of opening, from 1); `unmask` checks a translation's sentinels and puts the
protected text and the tags back. The training data (model/format_data.py) and the server's text
path both go through `mask`, so the model is trained on exactly the form it is served.

This module must not import torch: the runtime uses it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from model.sentinels import PLACEHOLDERS, SENTINEL_PATTERN, TAG_PAIRS, closing, opening, placeholder


@dataclass(frozen=True)
class Protected:
    """A span kept out of translation; `output` takes its place in the translation (the span
    itself, or a glossary term's required translation)."""

    source: str
    output: str
    kind: str = "protected"


@dataclass(frozen=True)
class Open:
    """An inline opening tag, exactly as written (attributes and all)."""

    tag: str


@dataclass(frozen=True)
class Close:
    tag: str


Piece = str | Protected | Open | Close


class TooManySentinels(ValueError):
    """More placeholders or tag pairs than the vocabulary has sentinels for."""


class UnbalancedTags(ValueError):
    """A closing tag without its opening tag in the same sentence, or the reverse."""


@dataclass(frozen=True)
class Masked:
    """A sentence written for the model: `text` with sentinels; `protected[i]` is `<x{i+1}>`,
    `tags[i]` is the pair `<g{i+1}>`/`</g{i+1}>`."""

    text: str
    protected: tuple[Protected, ...]
    tags: tuple[tuple[Open, Close], ...]
    # For each protected piece, the tag pairs open around it: a protected tag (one whose partner
    # lies in another sentence) must stay inside the same pairs, and in order, or the markup breaks.
    contexts: tuple[tuple[int, ...], ...] = ()
    # For each protected piece, whether a letter or digit touched it in the source (before, after):
    # where none did, none may touch it in the translation (`%1, 60%` must not become `%160 %`).
    glued: tuple[tuple[bool, bool], ...] = ()


def mask(pieces: Sequence[Piece]) -> Masked:
    """The sentence for the model. Raises TooManySentinels or UnbalancedTags (the caller then
    translates the text between the pieces instead)."""
    out: list[str] = []
    protected: list[Protected] = []
    contexts: list[tuple[int, ...]] = []
    tags: list[tuple[Open, Close]] = []
    open_stack: list[tuple[int, Open]] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif isinstance(piece, Protected):
            protected.append(piece)
            contexts.append(tuple(n for n, _ in open_stack))
            out.append(placeholder(len(protected)))
        elif isinstance(piece, Open):
            tags.append((piece, Close("")))
            open_stack.append((len(tags), piece))
            out.append(opening(len(tags)))
        else:
            if not open_stack:
                raise UnbalancedTags(f"{piece.tag} closes nothing")
            n, opened = open_stack.pop()
            tags[n - 1] = (opened, piece)
            out.append(closing(n))
    if open_stack:
        raise UnbalancedTags(f"{open_stack[-1][1].tag} is never closed")
    if len(protected) > PLACEHOLDERS or len(tags) > TAG_PAIRS:
        raise TooManySentinels(f"{len(protected)} protected spans and {len(tags)} tag pairs; the model has "
                               f"sentinels for {PLACEHOLDERS} and {TAG_PAIRS}")
    return Masked("".join(out), tuple(protected), tuple(tags), tuple(contexts), glued_pieces(pieces))


@dataclass(frozen=True)
class Unmasked:
    """A translation with its sentinels replaced; `problems` lists what the model got wrong
    (empty when every sentinel came out exactly once and every tag pair is well nested)."""

    text: str
    problems: tuple[str, ...]


def unmask(translation: str, masked: Masked) -> Unmasked:
    """The translation with protected text and tags put back, and what is wrong with it.

    Where the model emitted a sentinel twice, the first stays and the rest go; a sentinel it
    invented goes; a missing one, or a tag pair out of order, is reported as a problem, which the
    caller repairs (model/masking never guesses where a lost span belongs).
    """
    problems: list[str] = []
    seen: Counter[str] = Counter()
    out: list[str] = []
    position = 0
    stack: list[int] = []
    last_tag = 0  # the number of the last protected tag placed: they must come in order
    for match in SENTINEL_PATTERN.finditer(translation):
        out.append(translation[position:match.start()])
        position = match.end()
        kind, n = match.group(1), int(match.group(2))
        seen[match.group()] += 1
        if seen[match.group()] > 1:
            problems.append(f"{match.group()} repeated")
            continue
        if kind == "x" and 1 <= n <= len(masked.protected):
            if masked.protected[n - 1].kind == "tag":
                if n < last_tag or (masked.contexts and tuple(stack) != masked.contexts[n - 1]):
                    problems.append(f"{match.group()} (a tag) out of place")
                last_tag = n
            out.append(_spaced(masked.protected[n - 1].output, "".join(out), translation[position:],
                               masked.glued[n - 1] if masked.glued else (True, True)))
        elif kind == "g" and 1 <= n <= len(masked.tags):
            stack.append(n)
            out.append(masked.tags[n - 1][0].tag)
        elif kind == "/g" and 1 <= n <= len(masked.tags):
            if not stack or stack[-1] != n:
                problems.append(f"{match.group()} out of order")
            else:
                stack.pop()
            out.append(masked.tags[n - 1][1].tag)
        else:
            problems.append(f"{match.group()} invented")
    out.append(translation[position:])
    for n in range(1, len(masked.protected) + 1):
        if not seen[placeholder(n)]:
            problems.append(f"{placeholder(n)} missing")
    for n in range(1, len(masked.tags) + 1):
        if not seen[opening(n)] or not seen[closing(n)]:
            problems.append(f"{opening(n)} pair incomplete")
    if stack and not any(p.endswith("out of order") for p in problems):
        problems.append("tags left open")
    return Unmasked("".join(out), tuple(problems))


def touches(left: str, right: str) -> bool:
    """Whether a letter or digit ends `left` and another starts `right`."""
    return bool(left) and bool(right) and left[-1].isalnum() and right[0].isalnum()


def _spaced(output: str, before: str, after: str, glued: tuple[bool, bool]) -> str:
    """A protected piece's output, with a space where the translation would glue a word to it
    that the source kept apart."""
    return (" " if not glued[0] and touches(before, output) else "") + output + (
        " " if not glued[1] and touches(output, after) else "")


def glued_pieces(pieces: Sequence[Piece]) -> tuple[tuple[bool, bool], ...]:
    """For each protected piece, whether a letter or digit touches it in the text (before, after)."""
    glued = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, Protected):
            before = pieces[i - 1] if i > 0 and isinstance(pieces[i - 1], str) else ""
            after = pieces[i + 1] if i + 1 < len(pieces) and isinstance(pieces[i + 1], str) else ""
            glued.append((touches(before, piece.source), touches(piece.source, after)))
    return tuple(glued)


def pieces_of(text: str, spans: Sequence[tuple[int, int, Protected]]) -> list[Piece]:
    """`text` cut into text and the protected pieces at `spans` (non-overlapping, in order)."""
    pieces: list[Piece] = []
    position = 0
    for start, end, protected in spans:
        if start > position:
            pieces.append(text[position:start])
        pieces.append(protected)
        position = end
    if position < len(text):
        pieces.append(text[position:])
    return pieces
