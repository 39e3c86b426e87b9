"""A version's probes (probes.json): what the export computed, recorded so a server can check the
version before serving it (server/runtime/gate.py). The format is this module's `Probes`, written
by export/probes.py and read here; `replay` decodes them exactly as they were recorded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from model.search import DecodeOptions
from server.runtime.engine import translate_ids
from server.runtime.graphs import OnnxGraphs

PROBES_FILE = "probes.json"


@dataclass(frozen=True)
class Probe:
    source: str
    source_ids: list[int]
    greedy: list[int]  # token ids of its best translation, beam 1
    beam4: list[int]  # and beam 4


@dataclass(frozen=True)
class Heldout:
    """Test pairs spread over the test set, and what the version scored on them."""

    beam_size: int
    pairs: list[tuple[str, str]]
    bleu: float
    chrf: float


@dataclass(frozen=True)
class Probes:
    probes: list[Probe]
    heldout: Heldout

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Probes:
        """Raises KeyError, TypeError or ValueError for a file that is not probes."""
        data = json.loads(text)
        heldout = data["heldout"]
        return cls([Probe(**p) for p in data["probes"]],
                   Heldout(heldout["beam_size"], [tuple(p) for p in heldout["pairs"]], heldout["bleu"], heldout["chrf"]))

    @classmethod
    def read(cls, path: Path) -> Probes:
        return cls.from_json(Path(path).read_text())


def replay(graphs: OnnxGraphs, source_ids: list[list[int]], beam_size: int) -> list[list[int]]:
    """The best translation of each probe, decoded alone: the same shapes, and so the same kernels and
    rounding, wherever it is replayed, whatever the streams (batch mates move int8 results)."""
    decoded = translate_ids(graphs, source_ids, DecodeOptions(beam_size=beam_size), max_batch=1)
    return [hypotheses[0].tokens for hypotheses in decoded]
