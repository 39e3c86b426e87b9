"""Fitting a version's confidence calibration on held-out sentences (server/runtime/confidence.py).

Each sentence is translated as the server would (beam 4), and the logistic curve of its mean
token log-probability that best predicts its sentence-level chrF (/100) is fitted by least
squares. The curve is monotonic, so a confidence ranks sentences exactly as the model's own
log-probability does; calibrated, it reads as an expected quality: 0.6 means "about chrF 60".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sacrebleu

from model.search import DEFAULT_BEAM_SIZE, DecodeOptions
from model.tokenizer import Tokenizer
from server.runtime import Calibration, OnnxGraphs, mean_log_prob, translate_ids


def fit_calibration(graphs: OnnxGraphs, tokenizer: Tokenizer, pairs: list[tuple[str, str]], *, source: Path,
                    batch_size: int = 32) -> Calibration:
    """The calibration of `graphs` on `pairs` (those that fit the model's window)."""
    limit = graphs.config.max_positions
    usable = [(ids, ref) for ids, ref in zip(tokenizer.encode_batch([s for s, _ in pairs]), (r for _, r in pairs))
              if len(ids) < limit]
    hypotheses = translate_ids(graphs, [ids + [tokenizer.special_ids[3]] for ids, _ in usable],
                               DecodeOptions(beam_size=DEFAULT_BEAM_SIZE), max_batch=batch_size)
    x = np.array([mean_log_prob(h[:1], 1.0) for h in hypotheses])
    y = np.array([sacrebleu.sentence_chrf(tokenizer.decode(h[0].tokens), [ref]).score / 100
                  for h, (_, ref) in zip(hypotheses, usable)])
    slope, intercept = _fit_logistic(x, y)
    predicted = 1 / (1 + np.exp(-(slope * x + intercept)))
    return Calibration(round(slope, 6), round(intercept, 6), len(usable), source.name,
                       round(float(np.mean(np.abs(predicted - y))), 4))


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 5000, lr: float = 0.5) -> tuple[float, float]:
    """Least-squares fit of y ~ sigmoid(a x + b), by gradient descent on standardized x."""
    mean, std = float(x.mean()), float(x.std()) or 1.0
    z = (x - mean) / std
    a, b = 1.0, 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a * z + b)))
        g = (p - y) * p * (1 - p)
        a -= lr * float(np.mean(g * z)) * 4
        b -= lr * float(np.mean(g)) * 4
    return a / std, b - a * mean / std
