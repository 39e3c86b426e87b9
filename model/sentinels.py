"""Sentinel tokens: what the model copies instead of translating.

A span that must come out exactly as it went in (a placeholder such as `%s` or `{name}`, a URL,
an emoji, a glossary term's required translation) is replaced by a placeholder sentinel `<xN>`,
and an inline tag pair (`<b>...</b>`) by `<gN>...</gN>`; the model, fine-tuned on text written
this way, learns to carry each sentinel to the place where its content belongs, and the text
path puts the content back. The names follow XLIFF's inline elements (`<x/>` for a standalone
code, `<g>` for a paired one).

Each sentinel is one vocabulary piece (a SentencePiece user-defined symbol, always matched
whole), appended after the pieces the tokenizer was trained with, so adding them to a trained
model leaves every other id as it was. Sentinels are numbered in source order, from 1 in every
sentence.

This module must not import torch: the runtime uses it.
"""

from __future__ import annotations

import re

from sentencepiece import sentencepiece_model_pb2

PLACEHOLDERS = 32  # <x1> .. <x32>: standalone spans per sentence
TAG_PAIRS = 16  # <g1> .. </g16>: inline tag pairs per sentence


def placeholder(n: int) -> str:
    return f"<x{n}>"


def opening(n: int) -> str:
    return f"<g{n}>"


def closing(n: int) -> str:
    return f"</g{n}>"


SENTINELS: tuple[str, ...] = (
    tuple(placeholder(n) for n in range(1, PLACEHOLDERS + 1))
    + tuple(opening(n) for n in range(1, TAG_PAIRS + 1))
    + tuple(closing(n) for n in range(1, TAG_PAIRS + 1))
)

# Any sentinel in a translation (or in a text, where it must itself be protected), with its kind
# ("x", "g" or "/g") and number. Wider than SENTINELS on purpose: a model may emit `<x40>` for
# nothing, and the text path must see it to remove it.
SENTINEL_PATTERN = re.compile(r"<(x|g|/g)([0-9]{1,3})>")


def with_sentinels(model_proto: bytes) -> bytes:
    """A SentencePiece model with the sentinels appended as user-defined pieces (unchanged if it
    has them already)."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    pieces = {p.piece for p in model.pieces}
    if all(s in pieces for s in SENTINELS):
        return model_proto
    if any(s in pieces for s in SENTINELS):
        raise ValueError("the tokenizer holds some sentinels but not all: it was not made by with_sentinels")
    for symbol in SENTINELS:
        piece = model.pieces.add()
        piece.piece = symbol
        piece.score = 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return model.SerializeToString()
