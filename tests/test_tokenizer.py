"""The tokenizer: any Unicode encodes, normal text round-trips, invalid text is refused cleanly."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from model.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "lohelp.en-es.tsv.gz"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """Trained on 3,000 real English-Spanish paragraph pairs (joint vocabulary)."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        texts = [t for line in itertools.islice(f, 3000) for t in line.rstrip("\n").split("\t")]
    return Tokenizer.train(texts, vocab_size=1000)


NORMAL_TEXT = [
    "Hello, world!",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "El niño comió piñas y açaí; él dijo «gracias».",
    'Choose "Format - Cells" (Ctrl+1), then click OK.',
    "Prices rose 12.5% in 2024: from $3,000 to $3,375.",
    "Naïve café owners in Zürich can't stop — won't stop…",
]

HOSTILE_TEXT = [
    "emoji 😀👍🏽🇪🇸 and a family 👨‍👩‍👧",
    "CJK 漢字かなカナ 한국어",
    "combining: e\u0301 a\u0308 n\u0303 and Z\u0337\u0336a\u0335",
    "controls \x00 \x07 \x1b[31m and \x7f",
    "RTL: שלום مرحبا and zero\u200bwidth",
    "\U0010ffff private \ue000 use",
]


def test_special_ids_are_fixed(tokenizer):
    assert tokenizer.special_ids == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 1000


@pytest.mark.parametrize("text", NORMAL_TEXT)
def test_normal_text_round_trips(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and all(EOS_ID < i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_any_unicode_encodes_without_unknown_tokens(tokenizer, text):
    ids = tokenizer.encode(text)
    assert UNK_ID not in ids  # byte fallback: unseen characters become their UTF-8 bytes
    assert tokenizer.decode(ids) == text


def test_lone_surrogates_are_rejected_cleanly(tokenizer):
    with pytest.raises(ValueError, match="not valid Unicode.*position 4"):
        tokenizer.encode("bad \ud800 text")
    with pytest.raises(ValueError, match="not valid Unicode"):
        tokenizer.encode_batch(["fine", "\udfff"])


def test_whitespace_runs_collapse(tokenizer):
    assert tokenizer.decode(tokenizer.encode("  two   spaces  ")) == "two spaces"


def test_special_tokens_are_dropped_when_decoding(tokenizer):
    ids = tokenizer.encode("Hello")
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "Hello"


def test_save_and_load_give_the_same_tokenizer(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok.model")
    loaded = Tokenizer.load(tmp_path / "tok.model")
    assert loaded.to_bytes() == tokenizer.to_bytes()
    assert [loaded.encode(t) for t in NORMAL_TEXT] == [tokenizer.encode(t) for t in NORMAL_TEXT]


@pytest.mark.parametrize("text", ["\u2581", "a\u2581b", "\u2581\u2581 x \u2581", "\ue000\u2581\ue001"])
def test_sentencepieces_own_space_mark_round_trips(tokenizer, text):
    """U+2581 is SentencePiece's mark for a space; in a text it is a character like any other."""
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode_batch([text, "a"]) == [tokenizer.encode(text), tokenizer.encode("a")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), max_size=60))
def test_arbitrary_text_without_whitespace_round_trips(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert UNK_ID not in ids
    assert tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_python_string_either_encodes_or_is_refused(tokenizer, text):
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:
        assert "not valid Unicode" in str(e)
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    else:
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
