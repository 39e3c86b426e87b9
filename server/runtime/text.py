"""The text path: a request's text in, its translation out, with nothing dropped or garbled.

Every caller (the gRPC service, `rosetta-evaluate`, the Translator API) translates text through
`TextJob`, so the guarantees hold for all of them:
- Protected spans (placeholders, URLs, e-mail addresses, paths, unknown symbols, the caller's
  do-not-translate strings) come out exactly as they went in, and glossary terms as the caller
  gave them: each is a sentinel the model carries (model/masking.py).
- Inline tags come out well-formed around the words that correspond to what they enclosed.
- Every sentence is translated on its own; a sentence too long for the model is cut at its
  clause boundaries; none is refused.
- The model is checked, never trusted: a translation whose sentinels are missing, repeated or
  out of order is repaired by translating the text between the protected pieces and tags, which
  then stand in their source order; a translation much shorter than its source (a suspected
  omission) is translated again in smaller parts. Each repair is reported.

A job does not decode: it yields the token ids it needs translated and is sent the hypotheses,
round after round (a repair needs a second round), so the service can batch many jobs' rounds
together and a plain caller can run it with `run_jobs`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

from model.config import EOS_ID
from model.masking import (Close, Masked, Open, Piece, Protected, TooManySentinels, UnbalancedTags, glued_pieces,
                           mask, touches, unmask)
from model.search import DecodeOptions, Hypothesis
from model.sentinels import SENTINEL_PATTERN, placeholder
from model.spans import Span, literal_spans, non_overlapping, protected_spans, term_spans
from model.tokenizer import Tokenizer
from server.runtime.confidence import Calibration, confidence
from server.runtime.markup import Block, Format, Verbatim, parse
from server.runtime.segmenter import clause_starts, cut_to_fit, sentence_ends

# A translation shorter than this share of its source's characters is a suspected omission, for a
# source of at least OMISSION_MIN_WORDS words (short strings vary too much). On the valid split
# and 20,000 training pairs, the median reference is 0.96x its source's length and 0.02% fall
# below 0.55x (sources of 8 words or more): a false alarm only costs a translation in parts.
OMISSION_RATIO = 0.55
OMISSION_MIN_WORDS = 8

Decode = Callable[[list[list[int]]], list[list[Hypothesis]]]


@dataclass(frozen=True)
class TextOptions:
    """What a caller asks of the text path, besides the decoding options."""

    format: Format = Format.PLAIN
    glossary: tuple[tuple[str, str], ...] = ()  # (source term, required target)
    keep: tuple[str, ...] = ()  # strings never translated


@dataclass
class TextReport:
    """What the text path did to one text."""

    protected: list[str] = field(default_factory=list)  # protected spans kept, in source order
    tags: int = 0  # inline tag pairs placed
    glossary: list[tuple[str, str]] = field(default_factory=list)  # (source as written, target) applied
    repairs: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)  # per translated sentence, 0..1


@dataclass
class TextTranslation:
    """A text's n best translations (best first), with their scores and token counts."""

    texts: list[str]
    scores: list[float]
    tokens: list[int]
    sentences: int
    source_tokens: int
    report: TextReport


@dataclass
class _Unit:
    """A stretch of a sentence the model translates in one go."""

    pieces: tuple[Piece, ...]
    masked: Masked
    ids: list[int]
    sentence: int
    can_cut: bool  # may be cut into smaller parts on a suspected omission
    hypotheses: list[Hypothesis] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # by rank, once resolved
    replaced_by: list[_Item] | None = None


_Item = str | _Unit


class TextJob:
    """One text through the text path. Drive it with `run_jobs`, or by hand: `rounds()` is a
    generator that yields lists of source ids and is sent their hypotheses."""

    def __init__(self, text: str, tokenizer: Tokenizer, max_positions: int, *,
                 options: TextOptions = TextOptions(), n_best: int = 1, length_penalty: float = 1.0,
                 calibration: Calibration | None = None) -> None:
        """n_best and length_penalty: as decoded (the report's confidence undoes the penalty);
        calibration: the version's (its manifest's `confidence`), if it has one."""
        self.tokenizer, self.max_positions, self.options, self.n_best = tokenizer, max_positions, options, n_best
        self.length_penalty, self.calibration = length_penalty, calibration
        self.report = TextReport()
        self._sentences = 0
        self._items: list[_Item] = []
        for part in parse(text, options.format):
            if isinstance(part, Verbatim):
                self._items.append(part.text)
            else:
                self._items += self._block(part)

    # -- preparing -------------------------------------------------------------------------
    def _block(self, block: Block) -> list[_Item]:
        pieces = [p for piece in block.pieces for p in self._spans(piece)]
        items: list[_Item] = []
        for sentence in _cut(pieces, sentence_ends(_flat(pieces))):
            items += self._sentence(sentence)
        return items

    def _spans(self, piece: Piece) -> list[Piece]:
        """A text piece cut around its protected spans and glossary terms."""
        if not isinstance(piece, str):
            return [piece]
        found: list[Span] = (term_spans(piece, self.options.glossary)
                             + literal_spans(piece, self.options.keep, kind="keep")
                             + protected_spans(piece, self.tokenizer.knows))
        pieces: list[Piece] = []
        position = 0
        for span in non_overlapping(found):
            pieces += [piece[position:span.start], Protected(piece[span.start:span.end], span.output, span.kind)]
            position = span.end
        return [p for p in [*pieces, piece[position:]] if p != ""]

    def _sentence(self, pieces: list[Piece]) -> list[_Item]:
        """A sentence's items; one with no text to translate (only protected pieces) is copied and
        not counted as a sentence."""
        before, core, after = _balanced(pieces)
        index = self._sentences
        for piece in core:
            if isinstance(piece, Protected):
                if piece.kind == "glossary":
                    self.report.glossary.append((piece.source, piece.output))
                elif piece.kind not in ("tag", "markup", "entity"):
                    self.report.protected.append(piece.source)
            elif isinstance(piece, Open):
                self.report.tags += 1
        if not any(isinstance(p, str) and p.strip() for p in core):
            return [*before, *(_output(p) for p in core), *after]
        self._sentences += 1
        return [*before, *self._units(core, index, can_cut=True), *after]

    def _units(self, pieces: list[Piece], sentence: int, *, can_cut: bool) -> list[_Item]:
        """The units that translate `pieces`: one masked unit, or several parts of a long one; the
        text between the pieces where the model has no sentinels or the pieces need too many."""
        if not self.tokenizer.has_sentinels:
            return self._between(pieces, sentence, can_cut=can_cut)
        try:
            masked = mask(pieces)
        except (TooManySentinels, UnbalancedTags):
            return self._between(pieces, sentence, can_cut=can_cut)
        ids = self._ids(masked.text)
        if len(ids) <= self.max_positions:
            return [_Unit(tuple(pieces), masked, ids, sentence, can_cut)]
        parts = _cut(pieces, _part_starts(_flat(pieces), lambda t: len(self._ids(t)) <= self.max_positions - 8))
        if len(parts) == 1:
            return self._between(pieces, sentence, can_cut=False)
        self.report.repairs.append(f"sentence {sentence + 1}: {len(ids)} tokens, longer than the model's "
                                   f"{self.max_positions}; translated in {len(parts)} parts")
        return [item for part in parts for item in self._part(part, sentence)]

    def _part(self, pieces: list[Piece], sentence: int) -> list[_Item]:
        """A part of a cut sentence: its units, between its edge whitespace and unpaired edge tags."""
        before, core, after = _balanced(pieces)
        if not any(isinstance(p, str) and p.strip() for p in core):
            return [*before, *(_output(p) for p in core), *after]
        return [*before, *self._units(core, sentence, can_cut=False), *after]

    def _between(self, pieces: Sequence[Piece], sentence: int, *, can_cut: bool) -> list[_Item]:
        """Each stretch of text between the pieces as its own unit; the pieces stay in place."""
        items: list[_Item] = []
        glued = iter(glued_pieces(pieces))
        for piece in pieces:
            if isinstance(piece, Protected):
                items.append(_Kept(piece.output, next(glued)))
            elif not isinstance(piece, str):
                items.append(_output(piece))
            elif not piece.strip():
                items.append(piece)
            else:
                lead, core = piece[: len(piece) - len(piece.lstrip())], piece.strip()
                trail = piece[len(piece.rstrip()):]
                items += [lead, *self._plain_units(core, sentence, can_cut), trail]
        return [i for i in items if i != ""]

    def _plain_units(self, text: str, sentence: int, can_cut: bool) -> list[_Item]:
        parts = cut_to_fit(text, lambda t: len(self._ids(t)) <= self.max_positions)
        if len(parts) > 1 and can_cut:
            self.report.repairs.append(f"sentence {sentence + 1}: {len(self._ids(text))} tokens, longer than the "
                                       f"model's {self.max_positions}; translated in {len(parts)} parts")
        items: list[_Item] = []
        for part in parts:
            ids = self._ids(part.strip())
            if len(ids) > self.max_positions:  # a single "word" longer than the window: kept as it is
                items.append(part)
                self.report.repairs.append(f"sentence {sentence + 1}: a {len(ids)}-token word kept untranslated")
                continue
            lead, trail = part[: len(part) - len(part.lstrip())], part[len(part.rstrip()):]
            items += [lead, _Unit((part.strip(),), Masked(part.strip(), (), ()), ids, sentence,
                                  can_cut and len(parts) == 1), trail]
        return items

    def _ids(self, text: str) -> list[int]:
        return [*self.tokenizer.encode(text), EOS_ID]

    # -- translating -----------------------------------------------------------------------
    def rounds(self) -> Generator[list[list[int]], list[list[Hypothesis]], TextTranslation]:
        pending = [u for u in _units_of(self._items)]
        first = True
        while pending:
            results = yield [u.ids for u in pending]
            if len(results) != len(pending):
                raise ValueError(f"{len(pending)} units sent, {len(results)} translated")
            more: list[_Unit] = []
            for unit, hypotheses in zip(pending, results):
                unit.hypotheses = hypotheses
                more += self._resolve(unit, check_omission=first)
            pending, first = more, False
        return self._result()

    def _resolve(self, unit: _Unit, *, check_omission: bool) -> list[_Unit]:
        """Accept the unit's best translation whose sentinels are right (the beam's hypotheses in
        order: `decoding_options` asks for all of them), or replace the unit by the units that
        repair it."""
        checked = [(h, unmask(self.tokenizer.decode(h.tokens), unit.masked)) for h in unit.hypotheses]
        if unit.masked.protected or unit.masked.tags:  # plain: invented sentinels just go
            right = [(h, u) for h, u in checked if not u.problems]
        else:
            right = checked
        if not right:
            self.report.repairs.append(f"sentence {unit.sentence + 1}: {', '.join(checked[0][1].problems)}; the text "
                                       "between its protected spans and tags translated on its own")
            unit.replaced_by = self._between(unit.pieces, unit.sentence, can_cut=False)
            return list(_units_of(unit.replaced_by))
        if right[0][0] is not checked[0][0]:
            self.report.repairs.append(f"sentence {unit.sentence + 1}: {', '.join(checked[0][1].problems)} in the "
                                       "best hypothesis; the next one that placed every sentinel taken")
        if check_omission and unit.can_cut and _suspected_omission(unit.masked.text, right[0][1].text):
            parts = _cut(list(unit.pieces), clause_starts(_flat(list(unit.pieces))))
            if len(parts) > 1:
                self.report.repairs.append(f"sentence {unit.sentence + 1}: translation much shorter than the "
                                           f"source (a part may be missing); translated again in {len(parts)} parts")
                unit.replaced_by = [i for part in parts for i in self._part(part, unit.sentence)]
                return list(_units_of(unit.replaced_by))
        right = right[:self.n_best]
        unit.hypotheses = [h for h, _ in right]
        unit.outputs = [u.text for _, u in right]
        return []

    def _result(self) -> TextTranslation:
        ranks = max([len(u.outputs) for u in _leaves(self._items)] or [1])
        texts = [_join([s for item in self._items for s in _strings(item, rank)]) for rank in range(ranks)]
        leaves = list(_leaves(self._items))
        scores = [sum(u.hypotheses[min(r, len(u.hypotheses) - 1)].score for u in leaves) for r in range(ranks)]
        tokens = [sum(len(u.hypotheses[min(r, len(u.hypotheses) - 1)].tokens) for u in leaves) for r in range(ranks)]
        per_sentence: dict[int, list[Hypothesis]] = {}
        for unit in leaves:
            per_sentence.setdefault(unit.sentence, []).append(unit.hypotheses[0])
        self.report.confidence = [confidence(hs, self.length_penalty, self.calibration)
                                  for _, hs in sorted(per_sentence.items())]
        return TextTranslation(texts, scores, tokens, self._sentences,
                               sum(len(u.ids) for u in _units_of(self._items)), self.report)


class JobRounds:
    """Jobs driven together: each round, the ids every unfinished job needs are decoded in one
    call. The loop is the caller's, so that it can be synchronous (`run_jobs`) or awaited (the
    service's admission into the engines): `while ids := rounds.wanted(): rounds.answer(decode(ids))`."""

    def __init__(self, jobs: Sequence[TextJob]) -> None:
        self._rounds = [job.rounds() for job in jobs]
        self._results: list[TextTranslation | None] = [None] * len(jobs)
        self._wanted: dict[int, list[list[int]]] = {}
        for i in range(len(jobs)):
            self._advance(i, None)

    def wanted(self) -> list[list[int]]:
        return [ids for i in sorted(self._wanted) for ids in self._wanted[i]]

    def answer(self, hypotheses: Sequence[list[Hypothesis]]) -> None:
        sent, start = dict(sorted(self._wanted.items())), 0
        if len(hypotheses) != sum(map(len, sent.values())):
            raise ValueError(f"{sum(map(len, sent.values()))} sentences sent, {len(hypotheses)} translated")
        self._wanted.clear()
        for i, ids in sent.items():
            self._advance(i, list(hypotheses[start:start + len(ids)]))
            start += len(ids)

    def results(self) -> list[TextTranslation]:
        if self._wanted or any(r is None for r in self._results):
            raise RuntimeError("results asked for before every job finished")
        return [r for r in self._results if r is not None]

    def _advance(self, i: int, answer: list[list[Hypothesis]] | None) -> None:
        try:
            self._wanted[i] = self._rounds[i].send(answer) if answer is not None else next(self._rounds[i])
        except StopIteration as done:
            self._results[i] = done.value


def decoding_options(options: DecodeOptions) -> DecodeOptions:
    """What the text path decodes with: every hypothesis the beam keeps (it finishes beam_size of
    them whatever n_best asks, so this costs nothing), so that a sentence whose best hypothesis
    misplaced a sentinel can take the next one instead of a repair."""
    return replace(options, n_best=options.beam_size)


def run_jobs(jobs: Sequence[TextJob], decode: Decode) -> list[TextTranslation]:
    """Drive jobs to their translations with a synchronous decode function."""
    rounds = JobRounds(jobs)
    while ids := rounds.wanted():
        rounds.answer(decode(ids))
    return rounds.results()


# -- pieces ---------------------------------------------------------------------------------
_STANDIN = placeholder(1)  # what a non-text piece looks like to the segmenter: one word, no spaces


def _flat(pieces: Sequence[Piece]) -> str:
    return "".join(p if isinstance(p, str) else _STANDIN for p in pieces)


def _cut(pieces: Sequence[Piece], starts: Sequence[int]) -> list[list[Piece]]:
    """`pieces` cut at offsets of `_flat(pieces)` (which fall inside text pieces or between pieces)."""
    parts: list[list[Piece]] = [[]]
    cuts, position = sorted(set(starts)), 0
    for piece in pieces:
        width = len(piece) if isinstance(piece, str) else len(_STANDIN)
        while cuts and cuts[0] <= position:
            cuts.pop(0)
            if parts[-1]:
                parts.append([])
        if isinstance(piece, str):
            rest, offset = piece, position
            while cuts and cuts[0] < position + width:
                at = cuts.pop(0) - offset
                if rest[:at]:
                    parts[-1].append(rest[:at])
                parts.append([])
                rest, offset = rest[at:], offset + at
            if rest:
                parts[-1].append(rest)
        else:
            parts[-1].append(piece)
        position += width
    return [p for p in parts if p]


def _part_starts(flat: str, fits: Callable[[str], bool]) -> list[int]:
    starts, position = [], 0
    for part in cut_to_fit(flat, fits):
        if position:
            starts.append(position)
        position += len(part)
    return starts


def _balanced(pieces: Sequence[Piece]) -> tuple[list[str], list[Piece], list[str]]:
    """A sentence's pieces as (text before, core, text after): whitespace at its ends, and tags
    at its ends whose partner lies in another sentence, move out of what the model sees; an
    unpaired tag inside it becomes a protected piece, carried like a placeholder."""
    core = list(pieces)
    before: list[str] = []
    after: list[str] = []
    unpaired = _unpaired(core)
    while core and (isinstance(core[0], str) and not core[0].strip() or id(core[0]) in unpaired):
        before.append(_output(core.pop(0)))
    while core and (isinstance(core[-1], str) and not core[-1].strip() or id(core[-1]) in unpaired):
        after.insert(0, _output(core.pop()))
    if core and isinstance(core[0], str) and core[0] != core[0].lstrip():
        before.append(core[0][: len(core[0]) - len(core[0].lstrip())])
        core[0] = core[0].lstrip()
    if core and isinstance(core[-1], str) and core[-1] != core[-1].rstrip():
        after.insert(0, core[-1][len(core[-1].rstrip()):])
        core[-1] = core[-1].rstrip()
    core = [Protected(p.tag, p.tag, "tag") if id(p) in unpaired and not isinstance(p, (str, Protected)) else p
            for p in core]
    return before, core, after


def _unpaired(pieces: Sequence[Piece]) -> set[int]:
    stack: list[Piece] = []
    unpaired: set[int] = set()
    for piece in pieces:
        if isinstance(piece, Open):
            stack.append(piece)
        elif isinstance(piece, Close):
            if stack:
                stack.pop()
            else:
                unpaired.add(id(piece))
    return unpaired | {id(p) for p in stack}


def _output(piece: Piece) -> str:
    if isinstance(piece, str):
        return piece
    return piece.output if isinstance(piece, Protected) else piece.tag


def _suspected_omission(source: str, translation: str) -> bool:
    plain_source = SENTINEL_PATTERN.sub(" ", source)
    if len(plain_source.split()) < OMISSION_MIN_WORDS:
        return False
    return len(re.sub(r"\s+", " ", translation)) < OMISSION_RATIO * len(re.sub(r"\s+", " ", plain_source))


def _units_of(items: Sequence[_Item]):
    for item in items:
        if isinstance(item, _Unit):
            yield item


def _leaves(items: Sequence[_Item]):
    for item in items:
        if isinstance(item, _Unit):
            if item.replaced_by is None:
                yield item
            else:
                yield from _leaves(item.replaced_by)


def _strings(item: _Item, rank: int) -> list[str]:
    if isinstance(item, str):
        return [item]
    if item.replaced_by is not None:
        return [s for i in item.replaced_by for s in _strings(i, rank)]
    return [item.outputs[min(rank, len(item.outputs) - 1)]]


class _Kept(str):
    """A protected piece's output between separately translated text, with whether a letter or
    digit touched it in the source (before, after)."""

    glued: tuple[bool, bool]

    def __new__(cls, text: str, glued: tuple[bool, bool]) -> _Kept:
        kept = super().__new__(cls, text)
        kept.glued = glued
        return kept


def _join(strings: list[str]) -> str:
    """The strings joined, with a space where a translation would glue a word to a kept piece
    that the source kept apart."""
    out: list[str] = []
    for i, s in enumerate(strings):
        if isinstance(s, _Kept):
            before = out[-1] if out else ""
            after = next((t for t in strings[i + 1:] if t), "")
            s = (" " if not s.glued[0] and touches(before, s) else "") + str(s) + (
                " " if not s.glued[1] and touches(s, after) else "")
        if s:
            out.append(s)
    return "".join(out)
