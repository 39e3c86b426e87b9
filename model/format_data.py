"""Training data that teaches the model to carry sentinels (model/masking.py).

Three sources, each written in the masked form the server sends the model:
- LibreOffice help with its inline tags (`lohelp-tagged.en-es.tsv.gz`): tags become `<gN>`
  pairs, entities and placeholders `<xN>`. A pair lands in the split of its plain form.
- LibreOffice UI strings (`loui.en-es.tsv.gz`, human-translated software messages full of
  `%PRODUCTNAME`, `$(ARG1)`, `%1`): placeholders become `<xN>`. Split by a hash of the source.
- Plain training pairs where a word stands unchanged on both sides (a name, a number, an
  identifier): the word becomes `<x1>` on both, or is wrapped in `<g1>...</g1>` on both, so the
  model also sees sentinels in the middle of ordinary prose.
A pair whose two sides do not hold the same protected spans and tags is left out: training on it
would teach the model to drop or invent them.

`rosetta-prepare-data` calls `prepare_format` after the plain split; see data/README.md.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from model.masking import Close, Masked, Open, Piece, Protected, TooManySentinels, UnbalancedTags, mask, pieces_of
from model.sentinels import PLACEHOLDERS, SENTINEL_PATTERN, TAG_PAIRS
from model.spans import Span, non_overlapping, protected_spans

TAGGED_FILE = "lohelp-tagged.en-es.tsv.gz"
UI_FILE = "loui.en-es.tsv.gz"
# Held-out shares of the UI strings: more of those with placeholders, so that the development set
# measures placeholders on hundreds of strings.
UI_TEST_PERCENT = {True: 25, False: 5}
UI_VALID_PERCENT = {True: 5, False: 3}
TAGGED_REPEAT = 2  # the tagged help is the only real markup; seen twice per epoch
UI_PLACEHOLDER_REPEAT = 3  # UI strings with placeholders are few (about 700)
COPY_SHARE = 0.6  # of the plain pairs with a word to copy, the share added in masked form
RENUMBERED_SHARE = 0.5  # of the masked pairs, the share whose sentinels are renumbered at random

Pairs = list[tuple[str, str]]

_TAG = re.compile(r"<(/?)([A-Za-z][\w:-]*)((?:\s[^<>]*?)?)(/?)>")
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#x[0-9A-Fa-f]+);")
# A word worth copying: it holds a digit, a capital after its first letter, or is a capitalised
# word in mid-sentence (a name). Lowercase words are translated, so they never qualify.
_COPY_WORD = re.compile(r"(?<![\w<>/])(?:[A-Za-z]*[0-9][\w.]*|[A-Za-z][a-z]*[A-Z][\w]*|[A-Z][a-z]{2,})(?![\w>])")


def markup_pieces(text: str, known: Callable[[str], bool]) -> list[Piece]:
    """`text`'s tags, entities and protected spans as pieces (a tag's attributes are never searched
    for spans)."""
    pieces: list[Piece] = []
    position = 0
    for match in _TAG.finditer(text):
        pieces += _text_pieces(text[position:match.start()], known)
        if match.group(4):
            pieces.append(Protected(match.group(), match.group(), "tag"))
        elif match.group(1):
            pieces.append(Close(match.group()))
        else:
            pieces.append(Open(match.group()))
        position = match.end()
    return pieces + _text_pieces(text[position:], known)


def _text_pieces(text: str, known: Callable[[str], bool]) -> list[Piece]:
    spans = protected_spans(text, known) + [_entity_span(m) for m in _ENTITY.finditer(text)]
    chosen = non_overlapping(spans)
    return pieces_of(text, [(s.start, s.end, Protected(s.output, s.output, s.kind)) for s in chosen])


def _entity_span(match: re.Match[str]) -> Span:
    return Span(match.start(), match.end(), match.group(), "entity")


def masked_pair(source: list[Piece], target: list[Piece]) -> tuple[str, str] | None:
    """Both sides in masked form with the source's numbering, or None when the target does not
    hold exactly the source's protected spans and tags."""
    try:
        masked = mask(source)
    except (TooManySentinels, UnbalancedTags):
        return None
    renumbered = _renumber(target, masked)
    return None if renumbered is None else (masked.text, renumbered)


def _renumber(target: list[Piece], masked: Masked) -> str | None:
    spans = {}
    for n, protected in enumerate(masked.protected, 1):
        spans.setdefault(protected.source, []).append(n)
    pairs = {}
    for n, (opened, _) in enumerate(masked.tags, 1):
        pairs.setdefault(opened.tag, []).append(n)
    out, stack = [], []
    for piece in target:
        if isinstance(piece, str):
            out.append(piece)
        elif isinstance(piece, Protected):
            if not spans.get(piece.source):
                return None
            out.append(f"<x{spans[piece.source].pop(0)}>")
        elif isinstance(piece, Open):
            if not pairs.get(piece.tag):
                return None
            stack.append(pairs[piece.tag].pop(0))
            out.append(f"<g{stack[-1]}>")
        elif isinstance(piece, Close):
            if not stack:
                return None
            out.append(f"</g{stack.pop()}>")
    if stack or any(spans.values()) or any(pairs.values()):
        return None
    return "".join(out)


def copy_word_pair(source: str, target: str, rng: random.Random) -> tuple[str, str] | None:
    """The pair with one or two words that stand unchanged on both sides (once each) replaced by
    placeholders, or the first wrapped in `<g1>...</g1>`; None if it has no such word."""
    words = Counter(m.group() for m in _COPY_WORD.finditer(source))
    in_target = Counter(m.group() for m in _COPY_WORD.finditer(target))
    candidates = [w for w, n in words.items() if n == 1 and in_target[w] == 1]
    if not candidates:
        return None
    chosen = rng.sample(sorted(candidates), k=min(len(candidates), rng.choice((1, 1, 2, 2, 3, 4))))
    if rng.random() < 0.3:
        chosen, wrap = chosen[:1], True
    else:
        wrap = False
    patterns = {w: re.compile(rf"(?<![\w<>/]){re.escape(w)}(?![\w>])") for w in chosen}
    in_order = sorted(chosen, key=lambda w: patterns[w].search(source).start())  # type: ignore[union-attr]
    for n, word in enumerate(in_order, 1):
        replacement = f"<g{n}>{word}</g{n}>" if wrap else f"<x{n}>"
        source = patterns[word].sub(replacement, source, count=1)
        target = patterns[word].sub(replacement, target, count=1)
    return source, target


def renumbered(pair: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    """The pair with its sentinels renumbered at random (the same on both sides): the server
    numbers them 1, 2, 3... in source order, and a model that only ever saw that learns to count
    rather than to copy, repeating `<x2>` where `<x3>` belongs."""
    numbers = {kind: sorted({int(m.group(2)) for m in SENTINEL_PATTERN.finditer(pair[0]) if m.group(1).endswith(kind)})
               for kind in ("x", "g")}
    mapping = {kind: dict(zip(found, rng.sample(range(1, (PLACEHOLDERS if kind == "x" else TAG_PAIRS) + 1),
                                                 len(found)))) for kind, found in numbers.items()}

    def swap(match: re.Match[str]) -> str:
        kind = match.group(1)
        new = mapping[kind[-1]].get(int(match.group(2)))
        return match.group() if new is None else f"<{kind}{new}>"

    return SENTINEL_PATTERN.sub(swap, pair[0]), SENTINEL_PATTERN.sub(swap, pair[1])


def split_of_ui(source: str, known: Callable[[str], bool]) -> str:
    bucket = int(hashlib.sha256(f"ui-{source.lower()}".encode()).hexdigest(), 16) % 100
    has_spans = bool(protected_spans(source, known))
    if bucket < UI_TEST_PERCENT[has_spans]:
        return "test"
    return "valid" if bucket < UI_TEST_PERCENT[has_spans] + UI_VALID_PERCENT[has_spans] else "train"


def read_gz_pairs(path: Path) -> Pairs:
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            if len(columns) == 2 and columns[0].strip() and columns[1].strip():
                pairs.append((" ".join(columns[0].split()), " ".join(columns[1].split())))
    return pairs


def split_tagged(path: Path, plain_split: dict[str, str]) -> dict[str, Pairs]:
    """Tagged help pairs by the split of their plain form (tags removed, entities decoded)."""
    splits: dict[str, Pairs] = {"train": [], "valid": [], "test": []}
    for en, es in read_gz_pairs(path):
        plain = " ".join(html.unescape(_TAG.sub("", en)).split())
        split = plain_split.get(plain)
        if split is not None:
            splits[split].append((en, es))
    return splits


def split_ui(path: Path, known: Callable[[str], bool]) -> dict[str, Pairs]:
    splits: dict[str, Pairs] = {"train": [], "valid": [], "test": []}
    for en, es in read_gz_pairs(path):
        splits[split_of_ui(en, known)].append((en, es))
    return splits


def masked_pairs(pairs: Pairs, known: Callable[[str], bool], *, markup: bool) -> Pairs:
    """The pairs in masked form; pairs whose sides disagree are left out."""
    parse = (lambda t: markup_pieces(t, known)) if markup else (lambda t: _text_pieces(t, known))
    out = []
    for en, es in pairs:
        pair = masked_pair(parse(en), parse(es))
        if pair is not None:
            out.append(pair)
    return out


def prepare_format(corpus_dir: Path, plain_train: Pairs, held_out: set[str], lohelp_split: dict[str, str],
                   known: Callable[[str], bool], seed: int = 1) -> dict[str, Pairs]:
    """The masked training file (the plain training pairs and the masked ones, shuffled) and the
    held-out format sets, by file name. `held_out`: the lower-cased sources of the plain held-out
    sets, never trained on; a UI string already in the plain training pairs is never held out."""
    rng = random.Random(seed)
    tagged = split_tagged(corpus_dir / TAGGED_FILE, lohelp_split)
    ui = split_ui(corpus_dir / UI_FILE, known)
    trained = {en.lower() for en, _ in plain_train}
    for split in ("valid", "test"):
        ui[split] = [(en, es) for en, es in ui[split] if en.lower() not in trained | held_out]
    never = held_out | {en.lower() for split in ("valid", "test") for en, _ in ui[split]}
    ui_train = [(en, es) for en, es in ui["train"] if en.lower() not in never]
    ui_masked = masked_pairs(ui_train, known, markup=False)
    with_sentinels = [p for p in ui_masked if "<x" in p[0]]
    copies = [pair for en, es in plain_train if rng.random() < COPY_SHARE
              for pair in [copy_word_pair(en, es, rng)] if pair is not None]
    masked = (masked_pairs(tagged["train"], known, markup=True) * TAGGED_REPEAT + ui_masked
              + with_sentinels * (UI_PLACEHOLDER_REPEAT - 1) + copies)
    train = plain_train + [renumbered(p, rng) if rng.random() < RENUMBERED_SHARE else p for p in masked]
    rng.shuffle(train)
    return {
        "train.format.tsv": train,
        "valid.tagged.tsv": tagged["valid"],
        "test.tagged.tsv": tagged["test"],
        "valid.ui.tsv": ui["valid"],
        "test.ui.tsv": ui["test"],
    }
