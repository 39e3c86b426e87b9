"""Replaying a version's probes (probes.json, written by the export) exactly as they were recorded."""

from __future__ import annotations

from model.decode_options import DecodeOptions
from server.runtime.decoding import translate_ids
from server.runtime.graphs import OnnxGraphs


def replay(graphs: OnnxGraphs, source_ids: list[list[int]], beam_size: int) -> list[list[int]]:
    """The best translation of each probe, decoded alone: the same shapes, and so the same kernels and
    rounding, wherever it is replayed, whatever the streams (batch mates move int8 results)."""
    decoded = translate_ids(graphs, source_ids, DecodeOptions(beam_size=beam_size), max_batch=1)
    return [hypotheses[0].tokens for hypotheses in decoded]
