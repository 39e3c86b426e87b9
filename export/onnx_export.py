"""PyTorch model -> encoder.onnx and decoder.onnx, with dynamic batch, source length and cache capacity.

The current exporter (`torch.onnx.export(..., dynamo=True)`) traces the model with
torch.export and translates the graph with onnxscript's torchlib. The opset is pinned at 18:
torchlib's functions are written in opset 18 (TORCHLIB_OPSET in torch 2.13), so the graphs
need no version-conversion pass, and the pinned onnxruntime (1.31) runs opsets well beyond it.

Exporter pitfall: an example input of size 0 or 1 on a dynamic axis is specialised into a
constant. The example inputs therefore use batch 3, source length 7 and cache capacity 6; the
parity check then runs batch 1, capacity 0 and the other edges explicitly.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from export.graphs import DecoderStepGraph, EncoderGraph, OutputRowsGraph, ShortlistStepGraph
from model.transformer import Transformer
from server.runtime import decoder_names, encoder_names
from server.runtime.graph_io import MAX_CANDIDATES, OUTPUT_ROWS_NAMES, QUERY_GROUP

OPSET = 18
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SHORTLIST_DECODER_FILE = "decoder_shortlist.onnx"
OUTPUT_ROWS_FILE = "output_rows.onnx"
MAX_BATCH = 4096
# What the graphs' design does for speed (recorded in every manifest; measured in docs/benchmarks.md).
GRAPH_OPTIMIZATIONS = [
    "decoder step applies the decoding rules and returns the top-32 tokens (no logits copied out per step)",
    "attention written out as Q K^T so ONNX Runtime folds the transpose into MatMul",
    "queries scaled by 1/sqrt(d) before their heads are split, so no score MatMul runs with an alpha",
    "one key/value cache tensor per layer (no whole-cache split and stack per step)",
    "per-row positions and EOS rule: rows at different steps share a decoder step (step-level batching)",
    "the cache is read, never copied: a step returns only its new keys and values, written in place by the runtime",
    "top-k as wide as the widest beam in the step needs (the candidates input), not the widest beam allowed",
    "the decoding rules applied to each row's best k + 3 log-probabilities only, not as masks over the vocabulary",
    "a step carries one position per row as (B, D): no head transposes, linear layers as Gemms fused with bias and ReLU",
    "cross-attention reads one key/value entry per source: a sentence's beams are gathered into one product with it",
]

log = logging.getLogger("rosetta.export")


def _dims(model: Transformer) -> tuple[Dim, Dim, Dim, Dim]:
    c = model.config
    return (Dim("batch", min=1, max=MAX_BATCH), Dim("source_len", min=1, max=c.max_positions),
            Dim("capacity", min=0, max=c.max_positions), Dim("sources", min=1, max=MAX_BATCH))


def example_inputs(model: Transformer, batch: int = 3, source_len: int = 7, capacity: int = 6):
    """Inputs of the decoder step with sizes >= 2 on every dynamic axis."""
    c = model.config
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(4, c.vocab_size, (batch, source_len), generator=generator)
    source[:, -1] = c.eos_id
    source[0, 3:] = c.pad_id  # one padded row, so masking is traced as data, not as a constant
    source[0, 2] = c.eos_id
    with torch.no_grad():
        cross_k, cross_v = model.cross_kv(model.encode(source))
    cache = [torch.randn(batch, c.heads, capacity, c.head_dim, generator=generator) for _ in range(c.decoder_layers)]
    tokens = torch.randint(4, c.vocab_size, (batch, 1), generator=generator)
    # Rows at different lengths and one not allowed EOS, so both are traced as data.
    positions = torch.arange(capacity - 2, capacity - 2 - batch, -1).clamp(min=0)
    eos_allowed = torch.arange(batch) > 0
    # Two sources for the three rows: row 0 reads source 0, rows 1 and 2 (two beams) source 1.
    sources = 2
    query_grid = torch.tensor([[0, 0, 0], [1, 2, 0]])
    query_slots = torch.tensor([[0, 0], [1, 0], [1, 1]])
    return source, (tokens, positions, model.source_mask(source[:sources]), eos_allowed,
                    torch.zeros(8, dtype=torch.int64), query_grid, query_slots,
                    [t[:sources] for t in cross_k], [t[:sources] for t in cross_v], cache, [t.clone() for t in cache])


def _export(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            dynamic_shapes: dict, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter; failures still raise
        program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=OPSET,
                                    external_data=False, verbose=False)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_graphs(model: Transformer, out_dir: Path, *, shortlist: bool = False) -> dict[str, str]:
    """Write the encoder and decoder-step graphs of `model` (fp32) into `out_dir`, and with
    `shortlist` the step over a vocabulary shortlist and the graph of its output rows.

    Returns the graph files by role. Each graph passes onnx.checker's full check (shape
    inference included) before this returns.
    """
    model = model.eval()
    batch, source_len, capacity, sources = _dims(model)
    source, step_args = example_inputs(model)
    layers = model.config.decoder_layers
    log.info("exporting the encoder")
    _export(EncoderGraph(model), (source,), *encoder_names(layers), {"source_ids": {0: batch, 1: source_len}},
            out_dir / ENCODER_FILE)
    log.info("exporting the decoder step")
    cache = [{0: batch, 2: capacity}] * layers
    cross = [{0: sources, 2: source_len}] * layers
    step_shapes = {"tokens": {0: batch}, "positions": {0: batch}, "source_mask": {0: sources, 1: source_len},
                   "eos_allowed": {0: batch}, "candidates": {0: Dim("candidates", min=1, max=MAX_CANDIDATES)},
                   "query_grid": {0: sources, 1: Dim("query_group", min=1, max=QUERY_GROUP)},
                   "query_slots": {0: batch}, "cross_keys": cross, "cross_values": cross, "cache_keys": cache,
                   "cache_values": cache}
    _export(DecoderStepGraph(model), step_args, *decoder_names(layers), step_shapes, out_dir / DECODER_FILE)
    graphs = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}
    if shortlist:
        log.info("exporting the decoder step over a vocabulary shortlist")
        listed = Dim("shortlist", min=2, max=model.config.vocab_size)
        vocabulary, allowed = shortlist_example(model, batch=step_args[0].shape[0])
        _export(ShortlistStepGraph(model), (*step_args[:7], vocabulary, model.output_weight[vocabulary].detach(),
                                            allowed, *step_args[7:]),
                *decoder_names(layers, shortlist=True),
                _after(step_shapes, "query_slots",  # in the order of the inputs: the exporter pairs them so
                       {"vocabulary": {0: listed}, "output_rows": {0: listed}, "allowed": {0: batch, 1: listed}}),
                out_dir / SHORTLIST_DECODER_FILE)
        _export(OutputRowsGraph(model), (vocabulary,), *OUTPUT_ROWS_NAMES, {"vocabulary": {0: listed}},
                out_dir / OUTPUT_ROWS_FILE)
        graphs.update(decoder_shortlist=SHORTLIST_DECODER_FILE, output_rows=OUTPUT_ROWS_FILE)
    return graphs


def _after(shapes: dict, name: str, inserted: dict) -> dict:
    """`shapes` with `inserted` placed right after `name`."""
    items = list(shapes.items())
    at = [key for key, _ in items].index(name) + 1
    return dict(items[:at] + list(inserted.items()) + items[at:])


def shortlist_example(model: Transformer, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's vocabulary (the specials and every third token) and rows allowed different
    parts of it, so both are traced as data."""
    c = model.config
    vocabulary = torch.cat([torch.arange(4), torch.arange(4, c.vocab_size, 3)])
    allowed = torch.ones(batch, len(vocabulary), dtype=torch.bool)
    allowed[0, len(vocabulary) // 2:] = False
    return vocabulary, allowed
