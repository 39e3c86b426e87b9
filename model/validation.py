"""Validation during training: loss over the whole validation file, BLEU and chrF of greedy
translations of an evenly spread sample of it."""

from __future__ import annotations

from typing import Any

import torch

from model.batching import EncodedPairs, collate, token_batches
from model.loss import label_smoothed_loss
from model.scoring import score_translations
from model.tokenizer import Tokenizer
from model.train_config import TrainConfig
from model.translate import translate_texts
from model.transformer import Transformer
from model.tsv import evenly_spaced


@torch.no_grad()
def validate(model: Transformer, tokenizer: Tokenizer, valid: EncodedPairs, valid_pairs: list[tuple[str, str]],
             config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """valid_loss (not label-smoothed), valid_bleu, valid_chrf and valid_sentences (of the sample)."""
    model.eval()
    loss = _loss_per_token(model, valid, config.max_tokens, device)
    sample = evenly_spaced(valid_pairs, config.valid_bleu_sentences)
    hypotheses = translate_texts(model, tokenizer, [s for s, _ in sample], device=device)
    scores = score_translations(hypotheses, [t for _, t in sample])
    return {"valid_loss": loss, "valid_bleu": scores["bleu"], "valid_chrf": scores["chrf"],
            "valid_sentences": len(sample)}


def _loss_per_token(model: Transformer, valid: EncodedPairs, max_tokens: int, device: torch.device) -> float:
    """Cross-entropy per target token over every validation pair."""
    loss_sum, tokens = 0.0, 0
    for indices in token_batches(valid, max_tokens, seed=0, shuffle=False):
        loss, n = label_smoothed_loss(model, collate(valid, indices).to(device), 0.0)
        loss_sum, tokens = loss_sum + float(loss), tokens + n
    return loss_sum / tokens
