"""Replaying a version's probes (probes.json, written by the export) exactly as they were recorded."""

from __future__ import annotations

from model.decode_options import DecodeOptions
from server.decoding import translate_ids
from server.graphs import OnnxGraphs
from server.translator import pad_ids


def replay(graphs: OnnxGraphs, source_ids: list[list[int]], beam_size: int) -> list[list[int]]:
    """The best translation of each probe, decoded alone: the same shapes, and so the same kernels and
    rounding, wherever it is replayed, whatever the streams (batch mates move int8 results)."""
    options = DecodeOptions(beam_size=beam_size)
    return [translate_ids(graphs, pad_ids([ids], graphs.config.pad_id), options)[0][0].tokens for ids in source_ids]
