"""A text's structure: the blocks that are translated, and what stands between them verbatim.

Plain text: each line is a block; line breaks and the spaces around a block stay as they are.
HTML: block elements (`p`, `li`, `div`, `br`, headings, table cells...) separate blocks, inline
elements (`b`, `a`, `span`...) stay inside their block as tag pieces, so that a sentence that
spans inline tags is translated as one sentence. XML: every element is inline. In both markup
formats entities, comments and void elements (`<img>`, `<x/>`) are protected pieces, and
`code`, `pre`, `script`, `style`, `translate="no"` and `class="notranslate"` elements are kept
whole, content and all. Every piece keeps its exact source text (attributes, quoting, case), so
what is not translated comes back byte for byte.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from model.masking import Close, Open, Piece, Protected


class Format(enum.Enum):
    PLAIN = "plain"
    HTML = "html"
    XML = "xml"


@dataclass(frozen=True)
class Verbatim:
    """Text between blocks, copied to the output as it is."""

    text: str


@dataclass(frozen=True)
class Block:
    """Text to translate, as pieces (model/masking.py)."""

    pieces: tuple[Piece, ...]


Part = Verbatim | Block

BLOCK_ELEMENTS = frozenset({
    "address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "dialog", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header",
    "hr", "html", "legend", "li", "main", "nav", "ol", "option", "p", "section", "summary", "table", "tbody", "td",
    "tfoot", "th", "thead", "title", "tr", "ul", "meta", "link",
})
KEPT_ELEMENTS = frozenset({"code", "pre", "script", "style", "kbd", "samp", "var", "textarea", "svg", "math"})
VOID_ELEMENTS = frozenset({"area", "base", "col", "embed", "img", "input", "param", "source", "track", "wbr"})
_BLOCK_KEPT = frozenset({"pre", "script", "style", "textarea", "svg", "math"})
_LINES = re.compile(r"(\s*\n\s*)")


def parse(text: str, fmt: Format) -> list[Part]:
    """`text` as blocks and the verbatim text between them; their texts, joined, give `text`."""
    if fmt is Format.PLAIN:
        return _plain(text)
    return _Markup(text, html=fmt is Format.HTML).parts()


def _plain(text: str) -> list[Part]:
    parts: list[Part] = []
    for i, chunk in enumerate(_LINES.split(text)):
        if i % 2 == 1:
            parts.append(Verbatim(chunk))
        else:
            parts += _with_edges(chunk)
    return parts


def _with_edges(text: str) -> list[Part]:
    """A block between its leading and trailing spaces, which stay verbatim."""
    core = text.strip()
    if not core:
        return [Verbatim(text)] if text else []
    start = text.index(core)
    parts: list[Part] = [Verbatim(text[:start])] if start else []
    parts.append(Block((core,)))
    if start + len(core) < len(text):
        parts.append(Verbatim(text[start + len(core):]))
    return parts


class _Markup(HTMLParser):
    """Events of the parser with their exact source text: each event's text runs from its own
    offset to the next event's."""

    def __init__(self, text: str, *, html: bool) -> None:
        super().__init__(convert_charrefs=False)
        self.text, self.html = text, html
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.events: list[tuple[str, int, str, dict[str, str | None]]] = []  # kind, offset, tag, attrs
        self.feed(text)
        self.close()

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag, attrs):
        self.events.append(("start", self._offset(), tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.events.append(("void", self._offset(), tag, dict(attrs)))

    def handle_endtag(self, tag):
        self.events.append(("end", self._offset(), tag, {}))

    def handle_data(self, data):
        self.events.append(("data", self._offset(), "", {}))

    def _protected(self, *_):
        self.events.append(("protected", self._offset(), "", {}))

    handle_entityref = handle_charref = handle_comment = handle_decl = handle_pi = unknown_decl = _protected

    def parts(self) -> list[Part]:
        offsets = [e[1] for e in self.events] + [len(self.text)]
        parts: list[Part] = []
        pieces: list[Piece] = []
        kept: list[str] = []  # the source text of a kept element, while inside it
        kept_tag, depth = "", 0

        def flush() -> None:
            nonlocal pieces
            parts.extend(_block_parts(pieces))
            pieces = []

        for (kind, _, tag, attrs), start, end in zip(self.events, offsets, offsets[1:]):
            raw = self.text[start:end]
            if kept:
                kept.append(raw)
                depth += (kind == "start" and tag == kept_tag) - (kind == "end" and tag == kept_tag)
                if depth == 0:
                    whole = "".join(kept)
                    if self.html and (kept_tag in _BLOCK_KEPT or kept_tag in BLOCK_ELEMENTS):
                        flush()
                        parts.append(Verbatim(whole))
                    else:
                        pieces.append(Protected(whole, whole, "kept"))
                    kept = []
                continue
            if kind == "data":
                pieces.append(raw)
            elif kind == "protected":
                pieces.append(Protected(raw, raw, "entity" if raw.startswith("&") else "markup"))
            elif kind == "start" and _kept(tag, attrs, self.html) and not (self.html and tag in VOID_ELEMENTS):
                kept, kept_tag, depth = [raw], tag, 1
            elif self.html and tag in BLOCK_ELEMENTS:
                flush()
                parts.append(Verbatim(raw))
            elif kind == "void" or (kind == "start" and self.html and tag in VOID_ELEMENTS):
                pieces.append(Protected(raw, raw, "tag"))
            elif kind == "start":
                pieces.append(Open(raw))
            else:
                pieces.append(Close(raw))
        if kept:  # an element left open to the end: kept as it is
            pieces.append(Protected("".join(kept), "".join(kept), "kept"))
        flush()
        return parts


def _kept(tag: str, attrs: dict[str, str | None], html: bool) -> bool:
    if (attrs.get("translate") or "").lower() == "no":
        return True
    if "notranslate" in (attrs.get("class") or "").split():
        return True
    return html and tag in KEPT_ELEMENTS


def _block_parts(pieces: list[Piece]) -> list[Part]:
    """A block's pieces, with its leading and trailing whitespace (and a block of nothing but
    whitespace and protected pieces) verbatim."""
    if not any(isinstance(p, str) and p.strip() for p in pieces):
        return [Verbatim("".join(_source(p) for p in pieces))] if pieces else []
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    before = after = ""
    if isinstance(merged[0], str):
        before = merged[0][: len(merged[0]) - len(merged[0].lstrip())]
        merged[0] = merged[0].lstrip()
    if isinstance(merged[-1], str):
        stripped = merged[-1].rstrip()
        after, merged[-1] = merged[-1][len(stripped):], stripped
    core = tuple(p for p in merged if p != "")
    return [*([Verbatim(before)] if before else []), Block(core), *([Verbatim(after)] if after else [])]


def _source(piece: Piece) -> str:
    if isinstance(piece, str):
        return piece
    return piece.source if isinstance(piece, Protected) else piece.tag
