"""The parity gate: does an exported version compute what its PyTorch checkpoint computes?

Two checks, both run by every export before the version is published:

1. Tensors. Encoder outputs and decoder-step logits and new keys and values, ONNX Runtime
   against PyTorch's `decode`, on padded batches of mixed lengths across the shape ranges
   (batch 1 to 64, source length 1 to the maximum, cached length 0 to the maximum; rows at
   different lengths in one step over a cache with spare columns, as the engine runs them),
   random ids and real sentences.
2. Translations. Greedy and beam search through the project's ONNX Runtime engine
   (server/runtime/engine.py, every sentence joining the rows in flight as earlier ones finish)
   against the PyTorch reference decoder (static length-sorted batches) on a test set: token
   agreement, and sacreBLEU / chrF of each.

Tolerances by precision (`TOLERANCES`), and why:
- fp32: 1e-4 max abs difference. Both engines compute in fp32; kernels sum in different orders,
  which moves results by ~1e-6 relative, so 1e-4 on logits of magnitude ~10 is generous for
  rounding and far below anything a bug produces. Translations must be token-identical.
- int8: weights and activations are quantised (~1% relative error per matmul), so tensors
  differ visibly and no token identity is expected; the gate is quality: BLEU may drop by at
  most 1.0 against fp32.
- fp16: ~1e-3 relative precision; logits may differ by up to 0.1 and BLEU may drop by at most 0.5.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from model.batching import pad
from model.decoding import allowed_tokens
from model.decoding import translate_ids as reference_translate_ids
from model.scoring import score_translations
from model.search import DecodeOptions, length_sorted_batches
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from server.runtime import (EngineScores, OnnxGraphs, ParityReport, Shortlist, TensorParity, Tolerance,
                            TranslationParity, pad_ids)
from server.runtime import translate_ids as onnx_translate_ids


TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-4, identical_tokens=True, max_bleu_drop=0.0),
    "int8": Tolerance(max_abs_diff=None, identical_tokens=False, max_bleu_drop=1.0),
    "fp16": Tolerance(max_abs_diff=0.1, identical_tokens=False, max_bleu_drop=0.5),
}

# (batch, source length, past length, ragged); None = the model's maximum. Edges of every dynamic
# axis, batch and past 0 and 1 included, plus sizes never used when exporting; ragged: rows at
# different lengths in one step, as the engine (server/runtime/engine.py) runs them.
SHAPE_CASES = [(1, 1, 0, False), (1, 5, 1, False), (2, 9, 0, False), (3, 7, 4, False), (64, 12, 2, False),
               (5, None, 0, False), (4, 16, None, False), (17, 30, 11, False), (64, 41, 23, False),
               (9, 20, 6, True), (33, 50, 40, True), (4, 16, None, True)]


def _random_sources(config, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, length) ids: the first row full length, the others random shorter, right-padded."""
    ids = np.full((batch, length), config.pad_id, dtype=np.int64)
    for row in range(batch):
        n = length if row == 0 else int(rng.integers(1, length + 1))
        ids[row, : n - 1] = rng.integers(4, config.vocab_size, n - 1)
        ids[row, n - 1] = config.eos_id
    return ids


@torch.no_grad()
def _compare_step(model: Transformer, graphs: OnnxGraphs, source: np.ndarray, past_len: int,
                  rng: np.random.Generator, ragged: bool = False) -> dict[str, float]:
    """Max abs differences of encoder outputs, and of a decoder step after `past_len` cached tokens.

    The reference is the model's own `decode` over each row's cached tokens exactly. ragged:
    rows at different lengths, as the engine runs them: row b has its own number of cached
    tokens (one row all of them), and the cache the graph reads has columns beyond them, up to
    three spare ones, full of noise that the step must ignore. Otherwise the cache is exactly
    `past_len` wide (0 included).
    """
    c = model.config
    batch = source.shape[0]
    src = torch.from_numpy(source)
    src_mask = src != c.pad_id
    ref_k, ref_v = model.cross_kv(model.encode(src))
    onnx_k, onnx_v = graphs.encode(source)
    positions = np.full(batch, past_len, np.int64)
    if ragged:
        positions[1:] = rng.integers(0, past_len + 1, batch - 1)
    prefix = torch.from_numpy(rng.integers(4, c.vocab_size, (batch, past_len + 1)))
    past_k, past_v = model.empty_cache(batch)
    if past_len:  # causal: the first n columns of the whole prefix's cache are an n-token prefix's cache
        _, past_k, past_v = model.decode(prefix[:, :past_len], ref_k, ref_v, src_mask, past_k, past_v)
    tokens = prefix[torch.arange(batch), torch.from_numpy(positions)][:, None]
    ref_logits = torch.zeros(batch, c.vocab_size)
    ref_new = [torch.zeros(batch, c.heads, 1, c.head_dim) for _ in range(2 * c.decoder_layers)]
    for n in np.unique(positions).tolist():  # the rows with n cached tokens, over exactly those
        rows = torch.from_numpy(np.flatnonzero(positions == n))
        logits, keys, values = model.decode(tokens[rows], *([t[rows] for t in cache] for cache in (ref_k, ref_v)),
                                            src_mask[rows], *([t[rows, :, :n] for t in cache]
                                                              for cache in (past_k, past_v)))
        ref_logits[rows] = logits[:, -1]
        for new, grown in zip(ref_new, [*keys, *values]):
            new[rows] = grown[:, :, n:]
    spare = min(3, c.max_positions - past_len) if ragged else 0
    noise = rng.standard_normal((batch, c.heads, past_len + spare, c.head_dim)).astype(np.float32)
    cached = np.arange(past_len + spare)[None, None, :, None] < positions[:, None, None, None]

    def onnx_cache(cache: list[torch.Tensor]) -> list[np.ndarray]:
        return [t.numpy().astype(graphs.dtype) for t in cache]

    def noisy(cache: list[torch.Tensor]) -> list[np.ndarray]:
        """The cache with `spare` more columns, noise in every column beyond a row's own."""
        padded = (np.pad(t.numpy(), ((0, 0), (0, 0), (0, spare), (0, 0))) for t in cache)
        return [np.where(cached, t, noise).astype(graphs.dtype) for t in padded]

    logits, keys, values = graphs.step_logits(tokens.numpy(), positions, np.ones(batch, bool), onnx_cache(ref_k),
                                              onnx_cache(ref_v), source != c.pad_id, noisy(past_k), noisy(past_v))

    def diff(a: list[np.ndarray], b: list[torch.Tensor]) -> float:
        return max(float(np.abs(x.astype(np.float32) - y.numpy()).max()) for x, y in zip(a, b))

    return {"encoder": max(diff(onnx_k, ref_k), diff(onnx_v, ref_v)), "logits": diff([logits], [ref_logits]),
            "cache": diff([*keys, *values], ref_new)}


def tensor_parity(model: Transformer, graphs: OnnxGraphs, real_sources: list[list[int]], seed: int = 0) -> TensorParity:
    """Max abs differences over SHAPE_CASES with random ids, and over batches of real sentences."""
    c = model.config
    rng = np.random.default_rng(seed)
    results = []
    for batch, length, past, ragged in SHAPE_CASES:
        length = c.max_positions if length is None else min(length, c.max_positions)
        past = c.max_positions - 1 if past is None else min(past, c.max_positions - 1)
        diffs = _compare_step(model, graphs, _random_sources(c, batch, length, rng), past, rng, ragged)
        results.append({"batch": batch, "source_len": length, "past_len": past, **diffs})
    for start in range(0, min(len(real_sources), 128), 32):
        chunk = real_sources[start: start + 32]
        diffs = _compare_step(model, graphs, pad_ids(chunk, c.pad_id), int(rng.integers(0, 20)), rng)
        results.append({"batch": len(chunk), "source_len": max(map(len, chunk)), "past_len": -1, "real": True,
                        **diffs})
    return TensorParity(len(results), {key: max(r[key] for r in results) for key in ("encoder", "logits", "cache")},
                        [(r["batch"], r["source_len"], r["past_len"]) for r in results])


def _reference(model: Transformer, sources: list[list[int]], options: DecodeOptions, batch_size: int,
               progress: Callable[[int], None] | None, shortlist: Shortlist | None = None) -> list[list[int]]:
    """The PyTorch reference decoder's best translations, in static length-sorted batches, each
    over its vocabulary shortlist when there is one."""
    tokens: list[list[int]] = [[] for _ in sources]
    for chunk in length_sorted_batches([len(s) for s in sources], batch_size):
        allowed = None if shortlist is None else allowed_tokens([shortlist.for_source(sources[i]) for i in chunk],
                                                                model.config.vocab_size)
        for i, hyps in zip(chunk, reference_translate_ids(model, pad([sources[i] for i in chunk]), options, allowed)):
            tokens[i] = hyps[0].tokens
        if progress:
            progress(len(chunk))
    return tokens


def _engine(graphs: OnnxGraphs, sources: list[list[int]], options: DecodeOptions, batch_size: int,
            progress: Callable[[int], None] | None) -> list[list[int]]:
    """The runtime engine's best translations: every sentence submitted at once, each joining
    the rows in flight as earlier ones finish (step-level batching, as the server runs)."""
    return [hyps[0].tokens for hyps in onnx_translate_ids(graphs, sources, options, max_batch=batch_size,
                                                          on_batch=progress)]


def translation_parity(model: Transformer, graphs: OnnxGraphs, tokenizer: Tokenizer, pairs: list[tuple[str, str]],
                       beam_size: int, *, batch_size: int = 32,
                       progress: Callable[[int], None] | None = None) -> TranslationParity:
    """Decode `pairs`' sources with both engines (over the graphs' shortlist where they have one);
    token agreement and scores of each."""
    options = DecodeOptions(beam_size=beam_size)
    sources = tokenizer.encode_sources([s for s, _ in pairs], model.config.max_positions)
    references = [t for _, t in pairs]
    outputs, scores = {}, {}
    for engine, decode in (
        ("pytorch", lambda: _reference(model, sources, options, batch_size, progress, graphs.shortlist)),
        ("onnxruntime", lambda: _engine(graphs, sources, options, batch_size, progress)),
    ):
        start = time.perf_counter()
        outputs[engine] = decode()
        texts = tokenizer.decode_batch(outputs[engine])
        scores[engine] = EngineScores(**score_translations(texts, references),
                                      seconds=round(time.perf_counter() - start, 2))
    differing = [i for i, (a, b) in enumerate(zip(outputs["pytorch"], outputs["onnxruntime"])) if a != b]
    return TranslationParity(beam_size, len(pairs), scores["pytorch"], scores["onnxruntime"],
                             identical=len(pairs) - len(differing), first_differences=differing[:10],
                             bleu_change=scores["onnxruntime"].bleu - scores["pytorch"].bleu,
                             shortlist=graphs.shortlist is not None)


def judge(tensors: TensorParity, translations: list[TranslationParity], tolerance: Tolerance) -> list[str]:
    """The gate: the ways the measurements fall outside the tolerance (empty = passed)."""
    failures = []
    if tolerance.max_abs_diff is not None:
        failures += [f"{name} max abs diff {value:.3g} > {tolerance.max_abs_diff:g}"
                     for name, value in tensors.max_abs_diff.items() if value > tolerance.max_abs_diff]
    for run in translations:
        if tolerance.identical_tokens and run.identical != run.sentences:
            failures.append(f"{run.mode}: {run.sentences - run.identical} of {run.sentences} translations differ "
                            f"from PyTorch (first at sentences {run.first_differences})")
        if -run.bleu_change > tolerance.max_bleu_drop + 1e-9:
            failures.append(f"{run.mode}: BLEU {run.onnxruntime.bleu:.2f} is {-run.bleu_change:.2f} below "
                            f"PyTorch's {run.pytorch.bleu:.2f} (allowed: {tolerance.max_bleu_drop})")
    return failures


def verify(model: Transformer, graphs: OnnxGraphs, tokenizer: Tokenizer, pairs: list[tuple[str, str]], precision: str,
           *, beam_sizes: tuple[int, ...] = (1, 4), batch_size: int = 32,
           progress: Callable[[int], None] | None = None) -> ParityReport:
    """The full parity report of an exported version, with its verdict under `precision`'s tolerance.
    A version with a vocabulary shortlist is checked over the whole vocabulary and over its
    shortlist: the runtime decodes either way (SessionConfig.shortlist)."""
    sources = tokenizer.encode_sources([s for s, _ in pairs], model.config.max_positions)
    tolerance = TOLERANCES[precision]
    whole = OnnxGraphs(graphs.dir, replace(graphs.session_config, shortlist=False), manifest=graphs.manifest) \
        if graphs.shortlist is not None else graphs
    tensors = tensor_parity(model, whole, sources)
    translations = [translation_parity(model, g, tokenizer, pairs, beam, batch_size=batch_size, progress=progress)
                    for g in dict.fromkeys([whole, graphs]) for beam in beam_sizes]
    failures = judge(tensors, translations, tolerance)
    return ParityReport(precision, tolerance, tensors, translations, failures, passed=not failures)
