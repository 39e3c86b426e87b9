"""Small deterministic things tests build: corpora, models and batches."""

from __future__ import annotations

import random

import torch

from model.config import EOS_ID, PAD_ID, ModelConfig
from model.transformer import Transformer


def make_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(vocab_size=50, d_model=32, heads=4, ffn=64, encoder_layers=2, decoder_layers=2,
                  max_positions=40, dropout=0.0)
    fields.update(overrides)
    return Transformer(ModelConfig(**fields)).eval()


def random_batch(lengths: list[int], vocab: int = 50, seed: int = 1) -> torch.Tensor:
    """Right-padded, EOS-terminated source ids of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    out = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for row, n in enumerate(lengths):
        out[row, : n - 1] = torch.randint(4, vocab, (n - 1,), generator=g)
        out[row, n - 1] = EOS_ID
    return out


NOUNS = [("house", "casa", "f"), ("book", "libro", "m"), ("cat", "gato", "m"), ("table", "mesa", "f"),
         ("dog", "perro", "m"), ("window", "ventana", "f"), ("tree", "árbol", "m"), ("door", "puerta", "f")]
ADJECTIVES = [("red", "rojo", "roja"), ("small", "pequeño", "pequeña"), ("old", "viejo", "vieja"),
              ("white", "blanco", "blanca")]


def tiny_pairs(n: int = 32, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct short English-Spanish pairs, e.g. 'the old cat.' -> 'el gato viejo.'"""
    rng = random.Random(seed)
    pairs = []
    combos = [(noun, adj, plural) for noun in NOUNS for adj in ADJECTIVES for plural in (False, True)]
    rng.shuffle(combos)
    for (en_noun, es_noun, gender), (en_adj, es_m, es_f), plural in combos[:n]:
        article = {("m", False): "el", ("f", False): "la", ("m", True): "los", ("f", True): "las"}[gender, plural]
        es_adj = es_m if gender == "m" else es_f
        if plural:
            en_noun += "s"
            es_noun += "es" if es_noun.endswith("l") else "s"
            es_adj += "es" if es_adj.endswith("l") else "s"
        pairs.append((f"The {en_adj} {en_noun}.", f"{article.capitalize()} {es_noun} {es_adj}."))
    return pairs
