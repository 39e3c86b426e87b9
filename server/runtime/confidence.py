"""A sentence's confidence: how good its translation is likely to be, from 0 to 1.

The model's own signal is the mean log-probability of the tokens it generated. Raw, its
geometric mean (exp of the mean) is a probability but not a forecast of quality; a version's
export fits a calibration on held-out sentences (export/calibration.py): the logistic curve
that best predicts each sentence's chrF (/100) from its mean log-probability. The confidence is
that prediction, or the geometric mean for a version without a calibration. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from model.search import Hypothesis


@dataclass(frozen=True)
class Calibration:
    """confidence = 1 / (1 + exp(-(slope * mean_log_prob + intercept)))."""

    slope: float
    intercept: float
    sentences: int  # how many held-out sentences it was fitted on
    source: str  # which ones (file name)
    mean_abs_error: float  # of the fitted chrF/100 on those sentences

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)

    def __call__(self, mean_log_prob: float) -> float:
        z = self.slope * mean_log_prob + self.intercept
        return 1 / (1 + math.exp(-z)) if z > -60 else 0.0


def mean_log_prob(hypotheses: Sequence[Hypothesis], length_penalty: float) -> float:
    """The mean log-probability per generated token (end token included) over the hypotheses of
    one sentence's parts: their scores are log p / length**length_penalty."""
    total = tokens = 0.0
    for h in hypotheses:
        length = len(h.tokens) + 1
        total += h.score * length**length_penalty
        tokens += length
    return total / tokens if tokens else 0.0


def confidence(hypotheses: Sequence[Hypothesis], length_penalty: float, calibration: Calibration | None) -> float:
    mean = min(0.0, mean_log_prob(hypotheses, length_penalty))
    return round(calibration(mean) if calibration is not None else math.exp(mean), 4)
