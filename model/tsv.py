"""Reading parallel text as TSV (source<TAB>target), tolerant of bad lines.

A user's own corpus will have some broken lines; training counts and reports them instead of
crashing. Evaluation, where every line matters, asks for strict reading instead.
No torch here: the server reads held-out sets with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class TsvError(ValueError):
    """A file read strictly that holds a malformed line, or no pair at all."""


@dataclass
class TsvReport:
    """What reading one file found."""

    path: str
    lines: int = 0
    pairs: int = 0
    malformed: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), first few

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def summary(self) -> str:
        text = f"{self.path}: {self.pairs} pairs from {self.lines} lines"
        if self.malformed:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.malformed.most_common())
            where = ", ".join(f"line {n}" for n, _ in self.examples)
            text += f"; skipped {self.malformed_total} malformed ({reasons}; first at {where})"
        return text


def _check_line(raw: bytes) -> tuple[tuple[str, str] | None, str | None]:
    """Parse one line: (pair, None) or (None, reason)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    line = line.rstrip("\r\n")
    if not line.strip():
        return None, "empty line"
    columns = line.split("\t")
    if len(columns) != 2:
        return None, f"{len(columns)} columns instead of 2"
    source, target = (c.strip() for c in columns)
    if not source or not target:
        return None, "empty source or target"
    return (source, target), None


def read_tsv(path: str | Path, *, strict: bool = False, max_examples: int = 5) -> tuple[list[tuple[str, str]], TsvReport]:
    """Read `source<TAB>target` lines (no header).

    Lenient by default: malformed lines are skipped and counted in the report.
    With `strict=True` the first malformed line raises TsvError naming its line number.
    """
    report = TsvReport(path=str(path))
    pairs: list[tuple[str, str]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            report.lines += 1
            pair, reason = _check_line(raw)
            if pair is None:
                if strict:
                    raise TsvError(f"{path}, line {number}: {reason}; expected 'source<TAB>reference'")
                report.malformed[reason] += 1
                if len(report.examples) < max_examples:
                    report.examples.append((number, reason))
                continue
            pairs.append(pair)
    report.pairs = len(pairs)
    return pairs, report


def read_test_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Every line of a test set as a pair: the first malformed line, or a file without pairs,
    raises TsvError, since a skipped line would change the score."""
    pairs, _ = read_tsv(path, strict=True)
    if not pairs:
        raise TsvError(f"{path} holds no pairs")
    return pairs


def write_tsv(path: str | Path, pairs: list[tuple[str, str]]) -> None:
    """Write pairs as TSV; tabs and newlines inside a text become spaces so every pair stays one line."""
    with open(path, "w", encoding="utf-8") as f:
        for source, target in pairs:
            f.write(f"{_one_line(source)}\t{_one_line(target)}\n")


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def evenly_spaced(items: list[T], n: int) -> list[T]:
    """n items spread evenly over `items` (all of them if n is 0 or too large).

    A validation file often holds its domains one after the other; the first n lines would
    measure only the first domain.
    """
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]
