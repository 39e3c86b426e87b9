"""Text-level translation with the PyTorch reference decoder (validation, parity, evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.batching import pad
from model.decoding import translate_ids
from model.progress import progress_bar
from model.search import DecodeOptions, Hypothesis, length_sorted_batches
from model.tokenizer import Tokenizer
from model.transformer import Transformer


def translate_hypotheses(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    options: DecodeOptions = DecodeOptions(),
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """n-best hypotheses for each text, decoded in length-sorted batches (results in input order)."""
    encoded = tokenizer.encode_sources(list(texts), model.config.max_positions)
    return translate_encoded(model, encoded, options=options, batch_size=batch_size, device=device, progress=progress)


def translate_encoded(
    model: Transformer,
    encoded: Sequence[Sequence[int]],
    *,
    options: DecodeOptions = DecodeOptions(),
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """n-best hypotheses for each EOS-terminated id list, in length-sorted batches (results in order)."""
    results: list[list[Hypothesis]] = [[] for _ in encoded]
    bar = progress_bar(total=len(encoded), desc="translate", unit="sent", disable=not progress)
    for chunk in length_sorted_batches([len(e) for e in encoded], batch_size):
        src = pad([list(encoded[i]) for i in chunk]).to(device)
        for i, hyps in zip(chunk, translate_ids(model, src, options)):
            results[i] = hyps
        bar.update(len(chunk))
    bar.close()
    return results


def translate_texts(model: Transformer, tokenizer: Tokenizer, texts: Sequence[str], **kwargs) -> list[str]:
    """The best translation of each text."""
    return [tokenizer.decode(hyps[0].tokens) for hyps in translate_hypotheses(model, tokenizer, texts, **kwargs)]
