"""The PyTorch reference decoder: greedy and beam search over the model's key/value cache.

This is the yardstick the ONNX Runtime decoder in server/ is compared with token for token,
so the search is spelled out plainly:

- Every sentence has its own output budget (DecodeOptions.target_limit of its own length), so
  its translation never depends on what else is in the batch.
- Greedy: take the arg-max token; a sentence finishes at EOS or at its budget and leaves the
  batch (its rows stop costing compute).
- Beam: each step ranks beam score + log p(token) over all K*V continuations and hands the top
  2K of each sentence to its `SentenceBeams` (model/search.py), the bookkeeping that the
  ONNX Runtime decoder shares: which hypotheses finish, which beams live on, when it is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.search import DecodeOptions, Hypothesis, SentenceBeams, SentenceGreedy, advance_beams
from model.transformer import Cache, Transformer


def _rows(index: torch.Tensor, cache: Cache) -> Cache:
    """The cache of the batch rows `index`, in that order."""
    return [t.index_select(0, index) for t in cache]


@torch.no_grad()
def translate_ids(model: Transformer, src: torch.Tensor, options: DecodeOptions,
                  allowed: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Decode a batch of source ids (B, S), EOS-terminated and right-padded.

    allowed: (B, V) bool, the tokens each sentence may produce (its vocabulary shortlist,
    server/runtime/shortlist.py: log-probabilities are normalised over those only); None: all.
    Returns, for each sentence, `options.n_best` hypotheses, best first.
    """
    if src.shape[0] == 0:
        return []
    if options.beam_size == 1:
        return _greedy(model, src, options, allowed)
    return _beam(model, src, options, allowed)


def allowed_tokens(lists: Sequence[np.ndarray], vocab_size: int) -> torch.Tensor:
    """`translate_ids`' allowed (B, V) from each sentence's list of token ids (its shortlist)."""
    allowed = torch.zeros(len(lists), vocab_size, dtype=torch.bool)
    for row, own in enumerate(lists):
        allowed[row, torch.as_tensor(own, dtype=torch.long)] = True
    return allowed


def _step_log_probs(logits: torch.Tensor, config, step: int, options: DecodeOptions,
                    allowed: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities of the next token over the allowed ones (every row's, None: all); PAD
    and BOS are never generated, EOS not before min_length."""
    logits = logits[:, -1].float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    log_probs = torch.log_softmax(logits, dim=-1)
    log_probs[:, config.pad_id] = float("-inf")
    log_probs[:, config.bos_id] = float("-inf")
    if step < options.min_length:
        log_probs[:, config.eos_id] = float("-inf")
    return log_probs


def _limits(model: Transformer, src: torch.Tensor, options: DecodeOptions) -> list[int]:
    lengths = model.source_mask(src).sum(dim=1).tolist()
    return [options.target_limit(n, model.config.max_positions) for n in lengths]


def _greedy(model: Transformer, src: torch.Tensor, options: DecodeOptions,
            allowed: torch.Tensor | None) -> list[list[Hypothesis]]:
    config = model.config
    batch = src.shape[0]
    limits = _limits(model, src, options)
    cross_k, cross_v = model.cross_kv(model.encode(src))
    src_mask = model.source_mask(src)
    past_k, past_v = model.empty_cache(batch, src.device)
    tokens = torch.full((batch, 1), config.bos_id, dtype=torch.long, device=src.device)
    active = list(range(batch))  # original index of each live row
    sentences = [SentenceGreedy() for _ in range(batch)]
    step = 0
    while active:
        logits, past_k, past_v = model.decode(tokens, cross_k, cross_v, src_mask, past_k, past_v)
        log_probs = _step_log_probs(logits, config, step, options, None if allowed is None else allowed[active])
        best = log_probs.argmax(dim=-1)
        best_scores = log_probs.gather(1, best[:, None])[:, 0]
        step += 1
        keep = [row for row, (i, token, score) in enumerate(zip(active, best.tolist(), best_scores.tolist()))
                if sentences[i].advance(token, score, step, limits[i], config.eos_id)]
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=src.device)
            cross_k, cross_v, past_k, past_v = (_rows(index, c) for c in (cross_k, cross_v, past_k, past_v))
            src_mask, best = src_mask.index_select(0, index), best.index_select(0, index)
            active = [active[r] for r in keep]
        tokens = best[:, None]
    return [[s.hypothesis(limit, options.length_penalty)] for s, limit in zip(sentences, limits)]


def _beam(model: Transformer, src: torch.Tensor, options: DecodeOptions,
          allowed: torch.Tensor | None) -> list[list[Hypothesis]]:
    config = model.config
    k = options.beam_size
    batch = src.shape[0]
    limits = _limits(model, src, options)
    device = src.device
    # Every sentence's cross-attention cache is repeated for its K beams once, up front.
    beam_rows = torch.arange(batch, device=device).repeat_interleave(k)
    cross_k, cross_v = model.cross_kv(model.encode(src))
    cross_k, cross_v = _rows(beam_rows, cross_k), _rows(beam_rows, cross_v)
    src_mask = model.source_mask(src).index_select(0, beam_rows)
    past_k, past_v = model.empty_cache(batch * k, device)
    tokens = torch.full((batch * k, 1), config.bos_id, dtype=torch.long, device=device)
    # Only beam 0 is real at the start; the others would duplicate it.
    beam_scores = torch.full((batch, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    sentences = [SentenceBeams(k) for _ in range(batch)]
    active = list(range(batch))
    step = 0
    while active:
        n = len(active)
        logits, past_k, past_v = model.decode(tokens, cross_k, cross_v, src_mask, past_k, past_v)
        rows_allowed = None if allowed is None else allowed[active].repeat_interleave(k, dim=0)
        log_probs = _step_log_probs(logits, config, step, options, rows_allowed)  # (n*K, V)
        vocab = log_probs.shape[-1]
        candidates = (beam_scores.reshape(n * k, 1) + log_probs).reshape(n, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)
        step += 1
        decision = advance_beams(sentences, active, top_scores.tolist(), top_index.tolist(), vocab, step, limits,
                                 options, config.eos_id)
        if not decision.kept:
            break
        reorder = torch.tensor(decision.origins, dtype=torch.long, device=device)
        past_k, past_v = _rows(reorder, past_k), _rows(reorder, past_v)
        if len(decision.kept) < n:
            rows = torch.tensor(decision.kept_rows(k), dtype=torch.long, device=device)
            cross_k, cross_v = _rows(rows, cross_k), _rows(rows, cross_v)
            src_mask = src_mask.index_select(0, rows)
            active = [active[i] for i in decision.kept]
        tokens = torch.tensor(decision.tokens, dtype=torch.long, device=device)[:, None]
        beam_scores = torch.tensor(decision.scores, device=device).reshape(len(active), k)
    return [s.n_best(options.n_best) for s in sentences]
