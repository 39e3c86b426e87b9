"""Greedy and beam search over the exported graphs: the project's one ONNX Runtime decode loop.

The server's batcher, the CLI, `rosetta-evaluate` on a model version, the gate's probes, the
export's parity gate and the benchmarks all decode through `translate_ids`, the one batch entry
point: it sorts sentences by length, cuts them into batches, pads, decodes and scatters the
results back into the caller's order. It follows the PyTorch reference decoder
(model/decoding.py) rule for rule, sharing its options, output budget, scoring and beam
bookkeeping (model/search.py), so the two are token-identical in fp32. The decoder
graph itself applies the decoding rules and returns each row's best tokens (export/graphs.py),
so a step moves 2 x 32 numbers per row to Python instead of the whole vocabulary:

- Every sentence has its own output budget, so its translation never depends on its batch.
- Finished sentences leave the batch: their rows stop costing compute.
- The key/value cache is one (B, H, P, Dh) tensor per layer, kept where the graphs run
  (server/runtime/graphs.py); beams reorder its rows once per step and finished sentences' rows are
  dropped, both through `graphs.rows`.
- A sentence whose caller has gone (`abandoned`, asked once per step) leaves the batch the same
  way, so a cancelled or expired request stops costing compute mid-batch.
- With several streams (SessionConfig.streams) a batch is cut into that many consecutive
  parts decoded at the same time; batches are length-sorted, so each part is trimmed to its
  own longest source. Sentences are independent, so the result is the same.
No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from model.search import (DecodeOptions, Hypothesis, SentenceBeams, advance_beams, advance_greedy,
                          greedy_hypothesis, length_sorted_batches)
from server.runtime.graphs import OnnxGraphs

Abandoned = Callable[[int], bool]  # sentence index -> nobody waits for it any more


def _never(sentence: int) -> bool:
    return False


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """Right-pad id lists into a (B, max_len) int64 array."""
    out = np.full((len(sequences), max(len(s) for s in sequences)), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def translate_ids(graphs: OnnxGraphs, ids: Sequence[Sequence[int]], options: DecodeOptions, *,
                  max_batch: int = 32, abandoned: Abandoned | None = None,
                  on_batch: Callable[[int], None] | None = None) -> list[list[Hypothesis]]:
    """Translate encoded sentences (EOS-terminated id lists), decoded `max_batch` at a time.

    Returns, for each sentence in the caller's order, `options.n_best` hypotheses, best first;
    an empty list for a sentence that `abandoned(i)` gave up on (asked about every live sentence
    at every step). on_batch(n) after each batch of n sentences (progress). A sentence's result
    never depends on the others: max_batch=1 decodes each alone (what probes are recorded with).
    """
    abandoned = abandoned or _never
    results: list[list[Hypothesis]] = [[] for _ in ids]
    for chunk in length_sorted_batches([len(s) for s in ids], max_batch):
        decoded = _translate_padded(graphs, pad_ids([ids[i] for i in chunk], graphs.config.pad_id), options,
                                    lambda row, chunk=chunk: abandoned(chunk[row]))
        for i, hypotheses in zip(chunk, decoded):
            results[i] = hypotheses
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def _translate_padded(graphs: OnnxGraphs, source_ids: np.ndarray, options: DecodeOptions,
                      abandoned: Abandoned) -> list[list[Hypothesis]]:
    """One length-sorted batch of source ids (B, S) int64, right-padded."""
    rows = source_ids.shape[0]
    parts = min(graphs.streams, rows)
    if parts <= 1:
        return _decode(graphs, source_ids, options, abandoned)
    bounds = np.linspace(0, rows, parts + 1).round().astype(int)
    jobs = [graphs.pool.submit(_decode, graphs, _trimmed(source_ids[a:b], graphs.config.pad_id), options,
                               lambda row, a=a: abandoned(a + row))
            for a, b in pairwise(bounds)]
    return [hypotheses for job in jobs for hypotheses in job.result()]


def _trimmed(source_ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Without the padding columns that no row of this part needs."""
    return source_ids[:, : int((source_ids != pad_id).sum(axis=1).max())]


def _decode(graphs: OnnxGraphs, source_ids: np.ndarray, options: DecodeOptions,
            abandoned: Abandoned) -> list[list[Hypothesis]]:
    if source_ids.shape[0] == 0:
        return []
    if options.beam_size == 1:
        return _greedy(graphs, source_ids, options, abandoned)
    return _beam(graphs, source_ids, options, abandoned)


def _limits(graphs: OnnxGraphs, source_mask: np.ndarray, options: DecodeOptions) -> list[int]:
    return [options.target_limit(int(n), graphs.config.max_positions) for n in source_mask.sum(axis=1)]


def _greedy(graphs: OnnxGraphs, source_ids: np.ndarray, options: DecodeOptions,
            abandoned: Abandoned) -> list[list[Hypothesis]]:
    c = graphs.config
    batch = source_ids.shape[0]
    source_mask = source_ids != c.pad_id
    limits = _limits(graphs, source_mask, options)
    cross_k, cross_v = graphs.encode(source_ids)
    past_k, past_v = graphs.empty_cache(batch)
    tokens = np.full((batch, 1), c.bos_id, dtype=np.int64)
    active = list(range(batch))  # original index of each live row
    outputs: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    gone: set[int] = set()
    step = 0
    while active:
        out = graphs.step(tokens, cross_k, cross_v, source_mask, past_k, past_v, step >= options.min_length)
        past_k, past_v = out.keys, out.values
        best, best_scores = out.top_ids[:, 0], out.top_log_probs[:, 0]
        step += 1
        gone.update(sentence for sentence in active if abandoned(sentence))
        keep = advance_greedy([(row, sentence) for row, sentence in enumerate(active) if sentence not in gone],
                              best.tolist(), best_scores.tolist(), outputs, scores, limits, step, c.eos_id)
        if not keep:
            break
        if len(keep) < len(active):
            cross_k, cross_v, past_k, past_v = graphs.rows(keep, cross_k, cross_v, past_k, past_v)
            source_mask, best = source_mask[keep], best[keep]
            active = [active[r] for r in keep]
        tokens = best[:, None].astype(np.int64)
    return [
        [] if sentence in gone else [greedy_hypothesis(out, score, limit, options.length_penalty)]
        for sentence, (out, score, limit) in enumerate(zip(outputs, scores, limits))
    ]


def best_continuations(beam_scores: np.ndarray, top_log_probs: np.ndarray, top_ids: np.ndarray, vocab: int,
                       n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best continuations of each sentence's beams, best first.

    beam_scores: (S, K); top_log_probs, top_ids: (S*K, >= n), each beam row's best tokens.
    Returns scores and flat indices origin_beam * V + token, (S, n) each; equal scores rank by
    flat index, as a top-k over all K*V continuations would.
    """
    sentences, k = beam_scores.shape
    scores = (beam_scores[:, :, None] + top_log_probs[:, :n].reshape(sentences, k, n)).reshape(sentences, k * n)
    flat = (np.arange(k)[None, :, None] * vocab + top_ids[:, :n].reshape(sentences, k, n)).reshape(sentences, k * n)
    order = np.lexsort((flat, -scores), axis=-1)[:, :n]
    return np.take_along_axis(scores, order, axis=-1), np.take_along_axis(flat, order, axis=-1)


def _beam(graphs: OnnxGraphs, source_ids: np.ndarray, options: DecodeOptions,
          abandoned: Abandoned) -> list[list[Hypothesis]]:
    c = graphs.config
    k = options.beam_size
    vocab = c.vocab_size
    batch = source_ids.shape[0]
    source_mask = source_ids != c.pad_id
    limits = _limits(graphs, source_mask, options)
    # Every sentence's cross-attention cache is repeated for its K beams once, up front.
    beam_rows = np.repeat(np.arange(batch), k)
    cross_k, cross_v = graphs.rows(beam_rows, *graphs.encode(source_ids))
    source_mask = source_mask[beam_rows]
    past_k, past_v = graphs.empty_cache(batch * k)
    tokens = np.full((batch * k, 1), c.bos_id, dtype=np.int64)
    # Only beam 0 is real at the start; the others would duplicate it.
    beam_scores = np.full((batch, k), -np.inf, dtype=np.float32)
    beam_scores[:, 0] = 0.0
    sentences = [SentenceBeams(k) for _ in range(batch)]
    active = list(range(batch))
    gone: set[int] = set()
    step = 0
    while active:
        n = len(active)
        out = graphs.step(tokens, cross_k, cross_v, source_mask, past_k, past_v, step >= options.min_length)
        top_scores, top_index = best_continuations(beam_scores, out.top_log_probs, out.top_ids, vocab, 2 * k)
        step += 1
        decision = advance_beams(sentences, active, top_scores.tolist(), top_index.tolist(), vocab, step, limits,
                                 options, c.eos_id)
        leaving = [i for i in decision.kept if abandoned(active[i])]
        if leaving:
            gone.update(active[i] for i in leaving)
            decision = decision.without(leaving, k)
        if not decision.kept:
            break
        past_k, past_v = graphs.rows(decision.origins, out.keys, out.values)
        if len(decision.kept) < n:
            rows = decision.kept_rows(k)
            cross_k, cross_v = graphs.rows(rows, cross_k, cross_v)
            source_mask = source_mask[rows]
            active = [active[i] for i in decision.kept]
        tokens = np.array(decision.tokens, dtype=np.int64)[:, None]
        beam_scores = np.array(decision.scores, dtype=np.float32).reshape(len(active), k)
    return [[] if i in gone else s.n_best(options.n_best) for i, s in enumerate(sentences)]
