"""The two ONNX graphs of a translation model, as PyTorch modules to export.

Decoding needs the encoder once per source and the decoder once per generated token, so the
model is exported as two graphs over the model's own incremental API (model/transformer.py).
Caches are one tensor per decoder layer (the model's `Cache`). The graphs' inputs and outputs,
names, types and shapes, are the contract in server/runtime/graph_io.py.

The search itself runs in the graph's last nodes: log-softmax, the decoding rules (PAD and BOS
never generated, EOS only when allowed) and top-k. A step then hands the Python loop 2 x k
numbers per row instead of the whole vocabulary, and greedy search reads column 0. Beam
search needs each row's best 2K (K beams): the best 2K of a sentence's K*V continuations are
always among its rows' best 2K each. k is the length of the `candidates` input, 2K for the
widest beam in the step (at most MAX_CANDIDATES = 2 * MAX_BEAM_SIZE): a top-32 over the
vocabulary costs 0.7 ms at 64 rows, a top-8 0.3 ms (docs/benchmarks.md). `logits` stays an
output for the parity gate; a decode loop does not fetch it.

One decoder graph serves every step, the first included: at step 0 every row has 0 cached tokens.

Rows need not be at the same step: `positions` gives each row's own number of cached tokens,
its cache the first columns of the shared one (Transformer.decode_step). So the decode loop
(server/runtime/engine.py) adds sentences to a running batch and drops finished ones at any
step. The cache is an input only: the step returns this position's keys and values, and the
loop writes them into its cache in place, so no step copies the cache (a grown-cache output
would be one copy of it per layer and step). `eos_allowed` is per row too: rows carry their
own min_length.

A version exported with a vocabulary shortlist (export/shortlist.py) has a second step graph,
the same step with its output projection over the rows of the tokens its sentences may produce
(ShortlistStepGraph), and a graph that gathers those rows (OutputRowsGraph).
"""

from __future__ import annotations

import torch
from torch import nn

from model.transformer import Cache, Transformer
from server.runtime.graph_io import MAX_CANDIDATES, RULED


class EncoderGraph(nn.Module):
    """Source ids -> the cross-attention keys and values of every decoder layer."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keys, values = self.model.cross_kv(self.model.encode(source_ids))
        return (*keys, *values)


class DecoderStepGraph(nn.Module):
    """One decoding step: the previous token and the cache -> next-token logits, the best next
    tokens under the decoding rules, and this position's keys and values."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        c = model.config
        if c.vocab_size < MAX_CANDIDATES + RULED:
            raise ValueError(f"the decoder step ranks the best {MAX_CANDIDATES + RULED} tokens; the vocabulary has "
                             f"{c.vocab_size}")
        self.register_buffer("never_ids", torch.tensor([c.pad_id, c.bos_id]), persistent=False)  # never generated

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        source_mask: torch.Tensor,
        eos_allowed: torch.Tensor,
        candidates: torch.Tensor,
        query_grid: torch.Tensor,
        query_slots: torch.Tensor,
        cross_keys: Cache,
        cross_values: Cache,
        cache_keys: Cache,
        cache_values: Cache,
    ) -> tuple[torch.Tensor, ...]:
        hidden, keys, values = self.model.decode_step(tokens, cross_keys, cross_values, source_mask, cache_keys,
                                                      cache_values, positions, query_grid, query_slots)
        logits = self.model.logits(hidden)  # (B, V)
        return (logits, *self.best(logits, candidates, eos_allowed), *keys, *values)

    def best(self, logits: torch.Tensor, candidates: torch.Tensor, eos_allowed: torch.Tensor,
             vocabulary: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's best k = len(candidates) tokens under the decoding rules: log-probabilities
        and token ids (logits' column j is token vocabulary[j]; None: token j)."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        # The rules and the ranking touch only each row's best k + RULED tokens: masks added over
        # the whole vocabulary cost as much as the top-k itself at 64 rows (docs/benchmarks.md).
        k = candidates.shape[0]
        best, ids = log_probs.topk(k + RULED, dim=-1)  # the best k allowed tokens are among these
        if vocabulary is not None:
            ids = vocabulary[ids]
        eos_ruled_out = (ids == self.model.config.eos_id) & ~eos_allowed[:, None]
        ruled_out = (ids[..., None] == self.never_ids).any(-1) | eos_ruled_out
        top_log_probs, order = best.masked_fill(ruled_out, float("-inf")).topk(k, dim=-1)
        return top_log_probs, ids.gather(-1, order)


class ShortlistStepGraph(DecoderStepGraph):
    """The decoder step over a vocabulary shortlist (server/runtime/shortlist.py): the output
    projection is the product with `output_rows`, the rows of the step's `vocabulary` (the
    union of its sentences' lists, from OutputRowsGraph, made again only when that union
    changes), and each row's log-probabilities cover the tokens `allowed` to it. At one row the
    step reads a fraction of the projection's weights (docs/benchmarks.md). `logits` are over
    the vocabulary's columns, -inf where not allowed."""

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        source_mask: torch.Tensor,
        eos_allowed: torch.Tensor,
        candidates: torch.Tensor,
        query_grid: torch.Tensor,
        query_slots: torch.Tensor,
        vocabulary: torch.Tensor,
        output_rows: torch.Tensor,
        allowed: torch.Tensor,
        cross_keys: Cache,
        cross_values: Cache,
        cache_keys: Cache,
        cache_values: Cache,
    ) -> tuple[torch.Tensor, ...]:
        hidden, keys, values = self.model.decode_step(tokens, cross_keys, cross_values, source_mask, cache_keys,
                                                      cache_values, positions, query_grid, query_slots)
        logits = (hidden @ output_rows.t()).masked_fill(~allowed, float("-inf"))  # (B, V')
        return (logits, *self.best(logits, candidates, eos_allowed, vocabulary), *keys, *values)


class OutputRowsGraph(nn.Module):
    """Token ids (V',) -> their rows of the output projection (V', D): the shortlist step's
    `output_rows`, from the weights the version's other graphs share."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, vocabulary: torch.Tensor) -> torch.Tensor:
        return self.model.output_weight.index_select(0, vocabulary)  # one Gather (indexing exports a GatherND)
