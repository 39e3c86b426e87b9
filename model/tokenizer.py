"""Subword tokenizer: a SentencePiece BPE model with byte fallback, joint over both languages.

Byte fallback means any Unicode text encodes: a character the vocabulary lacks becomes its
UTF-8 bytes instead of <unk>. Normalisation is off ("identity") so that decode(encode(x))
gives x back for normal text; SentencePiece's default NFKC would rewrite characters.

This module must not import torch: the server uses it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from model.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from model.sentinels import SENTINELS, with_sentinels


class SourceTooLongError(ValueError):
    """A text with more tokens than the model accepts. Never truncated silently."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"text {index} has {tokens} tokens; the model accepts at most {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


class Tokenizer:
    """Text to token ids and back. Resources are loaded once, in the constructor."""

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id()) != (
            PAD_ID,
            UNK_ID,
            BOS_ID,
            EOS_ID,
        ):
            raise ValueError("tokenizer special ids must be pad=0, unk=1, bos=2, eos=3")
        # Characters the vocabulary spells with its own pieces; any other character is encoded
        # as bytes, which the model never learned to translate.
        self._alphabet = frozenset(
            char for i in range(self._sp.get_piece_size()) if self._sp.is_unknown(i) is False
            and not self._sp.is_byte(i) and not self._sp.is_control(i) for char in self._sp.id_to_piece(i)
        ) - {"\u2581"}
        self.has_sentinels = all(self._sp.piece_to_id(s) != UNK_ID for s in SENTINELS)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._proto)

    def to_bytes(self) -> bytes:
        return self._proto

    def with_sentinels(self) -> Tokenizer:
        """This tokenizer with the sentinel pieces appended (model/sentinels.py); every other id
        keeps its value, so a trained model only grows new embedding rows."""
        return Tokenizer(with_sentinels(self._proto))

    def knows(self, char: str) -> bool:
        """Whether `char` is spelled by the vocabulary's own pieces (not by byte fallback)."""
        return char in self._alphabet

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, seed_sentences: int = 2_000_000) -> Tokenizer:
        """Train a joint BPE vocabulary on `texts` (source and target sentences together)."""
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_non_empty(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=0.9999,
            normalization_rule_name="identity",
            split_digits=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=seed_sentences,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
        )
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        return PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def encode(self, text: str) -> list[int]:
        """Subword ids of `text`, without special tokens.

        Raises ValueError for text that is not valid Unicode (a lone surrogate has no UTF-8 form).
        """
        _check_unicode(text)
        return self._sp.encode(text) if _META not in text else self._encode_meta(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        for text in texts:
            _check_unicode(text)
        if len(texts) < _THREADED_BATCH or any(_META in text for text in texts):
            return [self.encode(text) for text in texts]
        return self._sp.encode(texts)

    def _encode_meta(self, text: str) -> list[int]:
        """SentencePiece reads U+2581 as its own mark for a space, so a text holding one would come
        back with a space, or nothing, in its place. It is encoded as its UTF-8 bytes instead: the
        text is encoded with a stand-in character the vocabulary lacks (so byte-encoded too), whose
        byte pieces are then swapped for those of U+2581."""
        stand_in = next(c for c in _STAND_INS if c not in text and not self.knows(c))
        ids = self._sp.encode(text.replace(_META, stand_in))
        old, new = (self._byte_ids(c) for c in (stand_in, _META))
        out, i = [], 0
        while i < len(ids):
            if ids[i:i + len(old)] == old:
                out += new
                i += len(old)
            else:
                out.append(ids[i])
                i += 1
        return out

    def _byte_ids(self, char: str) -> list[int]:
        return [self._sp.piece_to_id(f"<0x{b:02X}>") for b in char.encode("utf-8")]

    def encode_sources(self, texts: list[str], max_positions: int) -> list[list[int]]:
        """Model input ids of each text: its subwords and EOS.

        Raises SourceTooLongError for a text longer than `max_positions` tokens (EOS included).
        """
        encoded = []
        for i, ids in enumerate(self.encode_batch(texts)):
            if len(ids) + 1 > max_positions:
                raise SourceTooLongError(i, len(ids) + 1, max_positions)
            encoded.append(ids + [EOS_ID])
        return encoded

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped."""
        return self._sp.decode([i for i in ids if i > EOS_ID])

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return self._sp.decode([[i for i in ids if i > EOS_ID] for ids in batch])


_META = "\u2581"
_STAND_INS = [chr(c) for c in range(0xE000, 0xE100)]  # private-use characters

# sentencepiece encodes a list on a pool of threads that it starts for the call: worth it for a
# corpus, but for the few sentences of a request the pool costs ten times the encoding itself
# (84 us against 6 us for one sentence), on a server whose cores are busy decoding.
_THREADED_BATCH = 256


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid Unicode: {e.reason} at position {e.start}") from None


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text.strip():
            yield text
