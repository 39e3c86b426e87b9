"""The parity report: how an exported version computes against the PyTorch checkpoint it came
from. export/parity.py measures it and writes it into every manifest (server/runtime/repository.py);
the gate, rosetta-export and ListModels read it. One typed object, saved with every version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from model.search import mode_label


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: float | None  # tensors; None: reported, not gated
    identical_tokens: bool  # translations must match the reference token for token
    max_bleu_drop: float  # against the fp32 PyTorch reference


@dataclass(frozen=True)
class EngineScores:
    bleu: float
    chrf: float
    seconds: float


@dataclass(frozen=True)
class TranslationParity:
    """Both engines translating the same test pairs with one beam size, each sentence over its
    vocabulary shortlist in both when `shortlist`."""

    beam_size: int
    sentences: int
    pytorch: EngineScores
    onnxruntime: EngineScores
    identical: int  # sentences whose tokens are the same in both
    first_differences: list[int]  # indices of the first sentences that differ
    bleu_change: float  # onnxruntime - pytorch
    shortlist: bool = False

    @property
    def mode(self) -> str:
        return mode_label(self.beam_size) + (", shortlist" if self.shortlist else "")


@dataclass(frozen=True)
class TensorParity:
    """Largest absolute differences of the graphs' outputs over many shapes."""

    cases: int
    max_abs_diff: dict[str, float]  # encoder, logits, cache
    shapes: list[tuple[int, int, int]]  # (batch, source length, past length); past -1: real sentences


@dataclass(frozen=True)
class ParityReport:
    precision: str
    tolerance: Tolerance
    tensors: TensorParity
    translations: list[TranslationParity]
    failures: list[str]  # what fell outside the tolerance; empty when it passed
    passed: bool
    export_seconds: float = 0.0
    bytes: int = 0  # of the version's files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        tensors = data["tensors"]
        runs = [TranslationParity(**{**run, "pytorch": EngineScores(**run["pytorch"]),
                                     "onnxruntime": EngineScores(**run["onnxruntime"])})
                for run in data["translations"]]
        return cls(data["precision"], Tolerance(**data["tolerance"]),
                   TensorParity(tensors["cases"], tensors["max_abs_diff"], [tuple(s) for s in tensors["shapes"]]),
                   runs, data["failures"], data["passed"], data.get("export_seconds", 0.0), data.get("bytes", 0))

    def summary(self) -> str:
        """One line: the verdict, and each run's agreement and BLEU (ListModels shows it)."""
        runs = ", ".join(f"{run.mode} {run.identical}/{run.sentences} identical, BLEU {run.onnxruntime.bleu:.1f}"
                         for run in self.translations)
        return f"{'passed' if self.passed else 'FAILED'} ({self.precision}): {runs}"
