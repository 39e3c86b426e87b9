"""Corpus BLEU and chrF with sacreBLEU's default settings: the project's one way to score. No torch."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus sacreBLEU and chrF of `hypotheses` against one reference each."""
    return {
        "bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
        "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score,
    }
