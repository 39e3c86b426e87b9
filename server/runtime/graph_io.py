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
         source_mask       bool    (batch, source_len)    True at real source tokens
         eos_allowed       bool    (batch,)               False while the row's min_length is not reached
         candidates        int64   (k,)                   only its length counts: each row's best k tokens
                                                          come back (1 <= k <= MAX_CANDIDATES)
         cross_key_{i}     float32 (batch, heads, source_len, head_dim)
         cross_value_{i}   float32 (batch, heads, source_len, head_dim)
         cache_key_{i}     float32 (batch, heads, capacity, head_dim)   read only; columns from
         cache_value_{i}   float32 (batch, heads, capacity, head_dim)   positions[b] on are ignored
    out  logits            float32 (batch, vocab)         next-token logits
         top_log_probs     float32 (batch, k)             best next-token log-probabilities, best first
         top_ids           int64   (batch, k)             their token ids
         new_key_{i}       float32 (batch, heads, 1, head_dim)   this position's key and value: the
         new_value_{i}     float32 (batch, heads, 1, head_dim)   caller writes them at column positions[b]
"""

from __future__ import annotations

from model.search import MAX_BEAM_SIZE

# Beam search with K beams needs each row's best 2K tokens (export/graphs.py); greedy reads the best.
MAX_CANDIDATES = 2 * MAX_BEAM_SIZE


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


def decoder_names(layers: int) -> tuple[list[str], list[str]]:
    """The decoder step graph's input and output names."""
    inputs = ["tokens", "positions", "source_mask", "eos_allowed", "candidates", *cache_names("cross", layers), *cache_names("cache", layers)]
    outputs = ["logits", "top_log_probs", "top_ids", *cache_names("new", layers)]
    return inputs, outputs
