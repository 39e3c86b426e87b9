"""The graphs' inputs and outputs: the contract between the exporter, which writes them
(export/graphs.py), and the runtime, which feeds them (server/runtime/graphs.py). Defined once,
here. Caches are one tensor per decoder layer i = 0 .. L-1:

encoder.onnx
    in   source_ids        int64   (batch, source_len)   EOS-terminated, right-padded with pad_id
    out  cross_key_{i}     float32 (batch, heads, source_len, head_dim)
         cross_value_{i}   float32 (batch, heads, source_len, head_dim)

decoder.onnx (one step)
    in   tokens            int64   (batch, 1)             the previous token (BOS at step 0)
         positions         int64   (batch,)               each row's cached tokens (<= capacity): the
                                                          row's cache is its first `positions` columns
         source_mask       bool    (sources, source_len)  True at real source tokens
         eos_allowed       bool    (batch,)               False while the row's min_length is not reached
         candidates        int64   (k,)                   only its length counts: each row's best k tokens
                                                          come back (1 <= k <= MAX_CANDIDATES)
         query_grid        int64   (sources, width)       the row in each of a source's query slots
                                                          (any row where a slot is unused); width
                                                          2 .. QUERY_GROUP (query_width)
         query_slots       int64   (batch, 2)             each row's source and slot in query_grid
         cross_key_{i}     float32 (sources, heads, source_len, head_dim)   one entry per source: a
         cross_value_{i}   float32 (sources, heads, source_len, head_dim)   sentence's beams share it
         cache_key_{i}     float32 (batch, heads, capacity, head_dim)   read only; columns from
         cache_value_{i}   float32 (batch, heads, capacity, head_dim)   positions[b] on are ignored
    out  logits            float32 (batch, vocab)         next-token logits
         top_log_probs     float32 (batch, k)             best next-token log-probabilities, best first
         top_ids           int64   (batch, k)             their token ids
         new_key_{i}       float32 (batch, heads, 1, head_dim)   this position's key and value: the
         new_value_{i}     float32 (batch, heads, 1, head_dim)   caller writes them at column positions[b]

decoder_shortlist.onnx (one step over a vocabulary shortlist; versions exported with one)
    in   as decoder.onnx, and after query_slots:
         vocabulary        int64   (shortlist,)           the step's token ids, sorted (server/runtime/shortlist.py)
         output_rows       float32 (shortlist, d_model)   their output-projection rows (output_rows.onnx)
         allowed           bool    (batch, shortlist)     the tokens each row's sentence may produce
    out  as decoder.onnx; logits (batch, shortlist), -inf where not allowed; top_ids are token ids

output_rows.onnx
    in   vocabulary        int64   (shortlist,)
    out  output_rows       float32 (shortlist, d_model)
"""

from __future__ import annotations

import numpy as np

from model.search import MAX_BEAM_SIZE

# Beam search with K beams needs each row's best 2K tokens (export/graphs.py); greedy reads the best.
MAX_CANDIDATES = 2 * MAX_BEAM_SIZE
# The tokens that the decoding rules can rule out of a step's best: PAD, BOS and EOS. A step
# ranks each row's best k + RULED tokens.
RULED = 3


# A source's cross-attention entry serves up to this many rows (a sentence's beams) in one
# product; a sentence with more beams takes more entries, each a copy.
QUERY_GROUP = 4


def entries_for(beam_size: int) -> int:
    """Cross-attention entries a sentence with `beam_size` beams takes."""
    return -(-beam_size // QUERY_GROUP)


def query_width(beam_size: int) -> int:
    """The query grid's width for a step whose widest sentence has `beam_size` beams: at least
    2, since ONNX Runtime's one-row matmul sums in another order than its 2-to-4-row one, and a
    sentence's translation must not depend on its batch mates' beams (docs/benchmarks.md)."""
    return max(2, min(QUERY_GROUP, beam_size))


def own_sources(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """query_grid and query_slots for a step in which each row reads its own source's entry."""
    index = np.arange(rows, dtype=np.int64)
    return np.repeat(index[:, None], 2, axis=1), np.stack([index, np.zeros_like(index)], axis=1)


def candidates_for(beam_size: int) -> int:
    """How many best tokens a step returns per row when its widest sentence has `beam_size`
    beams: 2K, and 2 for greedy search (TopK of 2 is cheaper than of 1 in ONNX Runtime)."""
    return min(MAX_CANDIDATES, 2 * beam_size)


def cache_names(prefix: str, layers: int) -> list[str]:
    """Input or output names of a per-layer cache: e.g. cache_key_0 .. cache_key_{L-1}, then the values."""
    return [f"{prefix}_{kind}_{i}" for kind in ("key", "value") for i in range(layers)]


def encoder_names(layers: int) -> tuple[list[str], list[str]]:
    """The encoder graph's input and output names."""
    return ["source_ids"], cache_names("cross", layers)


def decoder_names(layers: int, *, shortlist: bool = False) -> tuple[list[str], list[str]]:
    """The decoder step graph's input and output names (of decoder_shortlist.onnx with `shortlist`)."""
    inputs = ["tokens", "positions", "source_mask", "eos_allowed", "candidates", "query_grid", "query_slots",
              *SHORTLIST_INPUTS * shortlist, *cache_names("cross", layers), *cache_names("cache", layers)]
    outputs = ["logits", "top_log_probs", "top_ids", *cache_names("new", layers)]
    return inputs, outputs


SHORTLIST_INPUTS = ["vocabulary", "output_rows", "allowed"]
OUTPUT_ROWS_NAMES = (["vocabulary"], ["output_rows"])
