"""ONNX Runtime's com.microsoft.BeamSearch operator against our Python decode loop (an experiment).

    .venv/bin/python bench/beam_search_op.py [--arch base]   # full: correctness, then the timings below
    .venv/bin/python bench/beam_search_op.py --quick         # smoke run: few sentences, one pass, no JSON

Our decode loop (server/runtime/engine.py) calls the encoder graph once and the decoder-step graph
once per token from Python. The BeamSearch contrib operator runs the whole search inside one
`session.run` instead. This script wraps a model version's own exported graphs
(export/graphs.py) as the operator's `encoder` and `decoder` subgraphs in its encoder-decoder
mode (model_type=1, the T5 convention of onnxruntime/contrib_ops/cpu/transformers/
subgraph_t5_encoder.cc and subgraph_t5_decoder.cc):

    encoder subgraph   in   encoder_input_ids int32 (B, S), encoder_attention_mask int32 (B, S),
                            decoder_input_ids int32 (B, 1)   (filled with decoder_start_token_id)
                       out  logits (B, 1, V), encoder_hidden_states, present_{key,value}_self_i
                            (B, H, 1, Dh), present_{key,value}_cross_i (B, H, S, Dh), per layer
                            interleaved (key_0, value_0, key_1, ...)
    decoder subgraph   in   input_ids int32 (B*K, 1), encoder_attention_mask int32 (B*K, S),
                            encoder_hidden_states, past_{key,value}_self_i, past_{key,value}_cross_i
                       out  logits (B*K, 1, V), present_{key,value}_self_i (B*K, H, P+1, Dh)

The encoder subgraph runs our encoder and then our decoder's first step on an empty
self-attention cache, since the operator takes the first token's logits from it. Our graphs
have no use for `encoder_hidden_states`, but the operator checks that the encoder subgraph's
second output has that name; and a decoder subgraph without it as third input was fed the
whole sequence generated so far instead of the last token by older ONNX Runtime releases
(UpdateDecoderFeeds in generation_device_helper.cc; 1.31 goes by input_ids' declared shape).
A (B, 1, 1) zero tensor stands in. Our decoder graph is cut down to the nodes that produce
`logits` and the caches: the operator applies log-softmax, the decoding rules (a vocabulary
mask for PAD and BOS, `min_length` for EOS) and top-k itself, so our in-graph search nodes
(and their `eos_allowed` input) would be work thrown away. The decoder's weights are stored
in both subgraphs; sharing them as outer-scope initializers would save memory, not work.

Checks: on the workload's first 16 sentences, beam 4 and greedy, exactly 24 tokens (EOS
suppressed, as in the workload), the operator's best sequence against ours, token for token,
with both sequences' log-probabilities. The operator's `max_length` and `min_length` count the
decoder start token (its output sequences begin with it), so it gets 25 for our 24.

Timings, on the fixed workload (../shared/bench/workload.toml) and with its protocol
(decode_speed.measure_mode: one warm-up pass, median of `timed_reps` passes, passes disturbed
by other processes repeated or flagged): beam4_b32 and greedy_b1 (num_beams=1), generated
tokens/s for our loop and for the operator, each in the two thread settings of decode_speed's
ORT_SETTINGS (one stream of 2 intra-op threads; two streams of 1, a batch cut in two halves
decoded at once), and the operator's speed as a ratio to our loop's. Full mode writes
bench/results/beam_search_op.json; --quick runs the same code on 16 sentences, one pass, and
its figures are only a smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, compose, helper

ROOT = Path(__file__).resolve().parent.parent
# This checkout's own code, not the one that the environment's editable install points at.
sys.path.insert(0, str(ROOT))

from decode_speed import (ORT_SETTINGS, WORKLOAD, load_workload, machine,  # noqa: E402
                          measure_mode, prepare_arch, workload_sources)

from model.config import ModelConfig  # noqa: E402
from model.search import DecodeOptions  # noqa: E402
from server.runtime import translate_ids  # noqa: E402
from server.runtime import OnnxGraphs  # noqa: E402
from server.runtime import load_manifest  # noqa: E402
from server.runtime import SessionConfig, create_session  # noqa: E402
from server.runtime import pad_ids  # noqa: E402

MODES = ("beam4_b32", "greedy_b1")
CHECK_SENTENCES = 16
QUICK_SENTENCES = {"beam4_b32": 16, "greedy_b1": 4}
OPSET = 18  # our exported graphs' opset
Decode = Callable[[list[list[int]], int, int], None]


# --- wrapping our graphs ----------------------------------------------------------------------
def self_cache_names(kind: str, layers: int) -> list[str]:
    """The operator's names for the self-attention cache's `kind` (past or present) tensors,
    key and value interleaved per layer."""
    return [f"{kind}_{part}_self_{i}" for i in range(layers) for part in ("key", "value")]


def cross_cache_names(kind: str, layers: int) -> list[str]:
    return [f"{kind}_{part}_cross_{i}" for i in range(layers) for part in ("key", "value")]


def our_cache_names(prefix: str, layers: int) -> list[str]:
    """Our names in the same interleaved order (our graphs list all keys, then all values)."""
    return [f"{prefix}_{part}_{i}" for i in range(layers) for part in ("key", "value")]


def embed(graph: GraphProto, prefix: str, names: dict[str, str]) -> tuple[list[NodeProto], list[TensorProto]]:
    """Nodes and weights of one of our graphs for splicing into another graph.

    Internal names get `prefix`, so two graphs can share one subgraph; the graph's inputs and
    outputs are renamed by `names` (ours -> the host graph's), and only the nodes that some
    output named there needs are kept.
    """
    g = compose.add_prefix_graph(graph, prefix, rename_inputs=False, rename_outputs=False)
    nodes = list(g.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    keep: set[int] = set()
    stack = [producer[o.name] for o in g.output if o.name in names]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(producer[x] for x in nodes[i].input if x in producer)
    live = [nodes[i] for i in sorted(keep)]  # in the graph's (topological) order
    used = {x for node in live for x in node.input}
    inputs = {i.name for i in g.input}
    if missing := (used & inputs) - names.keys():
        raise ValueError(f"{graph.name}: inputs {sorted(missing)} are needed but not provided")
    for node in live:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    return live, [t for t in g.initializer if t.name in used]


def float_info(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def encoder_subgraph(encoder: GraphProto, decoder: GraphProto, c: ModelConfig) -> GraphProto:
    """Our encoder, then our decoder's first step from an empty cache."""
    layers, heads, head_dim = c.decoder_layers, c.heads, c.d_model // c.heads
    enc_nodes, enc_weights = embed(encoder, "enc/", {
        "source_ids": "enc/source_ids64",
        **{ours: theirs for ours, theirs in zip(our_cache_names("cross", layers),
                                                cross_cache_names("present", layers))}})
    dec_nodes, dec_weights = embed(decoder, "dec/", {
        "tokens": "dec/tokens64", "source_mask": "dec/source_mask",
        **dict(zip(our_cache_names("cross", layers), cross_cache_names("present", layers))),
        **{name: "dec/empty_cache" for name in our_cache_names("past", layers)},
        "logits": "dec/logits",
        **dict(zip(our_cache_names("present", layers), self_cache_names("present", layers)))})
    nodes = [
        helper.make_node("Cast", ["encoder_input_ids"], ["enc/source_ids64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["decoder_input_ids"], ["dec/tokens64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["encoder_attention_mask"], ["dec/source_mask"], to=TensorProto.BOOL),
        # (B, H, 0, Dh) and (B, 1, 1) zeros: the empty self-attention cache, and the stand-in
        # encoder_hidden_states that the operator passes along but our decoder does not read.
        helper.make_node("Shape", ["encoder_input_ids"], ["batch"], end=1),
        helper.make_node("Concat", ["batch", "cache_dims"], ["cache_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["cache_shape"], ["dec/empty_cache"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Concat", ["batch", "hidden_dims"], ["hidden_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["hidden_shape"], ["encoder_hidden_states"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        *enc_nodes, *dec_nodes,
        helper.make_node("Unsqueeze", ["dec/logits", "axis_1"], ["logits"]),
    ]
    constants = [helper.make_tensor("cache_dims", TensorProto.INT64, [3], [heads, 0, head_dim]),
                 helper.make_tensor("hidden_dims", TensorProto.INT64, [2], [1, 1]),
                 helper.make_tensor("axis_1", TensorProto.INT64, [1], [1])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", length])
              for name, length in (("encoder_input_ids", "source_len"), ("encoder_attention_mask", "source_len"),
                                   ("decoder_input_ids", 1))]
    outputs = [float_info("logits", ["batch", 1, c.vocab_size]), float_info("encoder_hidden_states", ["batch", 1, 1]),
               *(float_info(n, ["batch", heads, 1, head_dim]) for n in self_cache_names("present", layers)),
               *(float_info(n, ["batch", heads, "source_len", head_dim]) for n in cross_cache_names("present", layers))]
    return helper.make_graph(nodes, "encoder", inputs, outputs, constants + enc_weights + dec_weights)


def decoder_subgraph(decoder: GraphProto, c: ModelConfig) -> GraphProto:
    """One step of our decoder, between the operator's int32 ids and mask and (B, 1, V) logits."""
    layers, heads, head_dim = c.decoder_layers, c.heads, c.d_model // c.heads
    dec_nodes, dec_weights = embed(decoder, "dec/", {
        "tokens": "dec/tokens64", "source_mask": "dec/source_mask",
        **dict(zip(our_cache_names("cross", layers), cross_cache_names("past", layers))),
        **dict(zip(our_cache_names("past", layers), self_cache_names("past", layers))),
        "logits": "dec/logits",
        **dict(zip(our_cache_names("present", layers), self_cache_names("present", layers)))})
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["dec/tokens64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["encoder_attention_mask"], ["dec/source_mask"], to=TensorProto.BOOL),
        *dec_nodes,
        helper.make_node("Unsqueeze", ["dec/logits", "axis_1"], ["logits"]),
    ]
    # input_ids must be declared (B, 1): with any other second dimension the operator feeds
    # the whole sequence generated so far (subgraph_t5_decoder.cc, use_sequence_as_input_ids_).
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", 1]),
              helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "source_len"]),
              float_info("encoder_hidden_states", ["batch", 1, 1]),
              *(float_info(n, ["batch", heads, "past_len", head_dim]) for n in self_cache_names("past", layers)),
              *(float_info(n, ["batch", heads, "source_len", head_dim]) for n in cross_cache_names("past", layers))]
    outputs = [float_info("logits", ["batch", 1, c.vocab_size]),
               *(float_info(n, ["batch", heads, "present_len", head_dim]) for n in self_cache_names("present", layers))]
    return helper.make_graph(nodes, "decoder", inputs, outputs,
                             [helper.make_tensor("axis_1", TensorProto.INT64, [1], [1])] + dec_weights)


def beam_search_model(version_dir: Path) -> tuple[bytes, ModelConfig]:
    """A model whose one BeamSearch node decodes our int64 source ids, and the model's config.

    Inputs: source_ids int64 (B, S) right-padded as our loop takes them, max_length,
    min_length, num_beams int32 (1), length_penalty float (1). Output: sequences int32
    (B, 1, max_length), the decoder start token first; sequences_scores float (B, 1).
    """
    manifest = load_manifest(version_dir)
    c = manifest.config
    encoder = onnx.load(version_dir / manifest.graphs["encoder"]).graph
    decoder = onnx.load(version_dir / manifest.graphs["decoder"]).graph
    vocab_mask = np.ones(c.vocab_size, dtype=np.int32)
    vocab_mask[[c.pad_id, c.bos_id]] = 0  # never generated, as our decoder graph rules
    nodes = [
        helper.make_node("Cast", ["source_ids"], ["input_ids"], to=TensorProto.INT32),
        # The operator's own mask, made when none is given, zeroes only leading (left) padding.
        helper.make_node("Equal", ["source_ids", "pad_id"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_real"]),
        helper.make_node("Cast", ["is_real"], ["attention_mask"], to=TensorProto.INT32),
        helper.make_node(
            "BeamSearch",
            ["input_ids", "max_length", "min_length", "num_beams", "num_return_sequences", "length_penalty",
             "", "vocab_mask", "", "attention_mask"],
            ["sequences", "sequences_scores"], domain="com.microsoft",
            model_type=1, eos_token_id=c.eos_id, pad_token_id=c.pad_id, decoder_start_token_id=c.bos_id,
            early_stopping=0, encoder=encoder_subgraph(encoder, decoder, c), decoder=decoder_subgraph(decoder, c)),
    ]
    constants = [helper.make_tensor("pad_id", TensorProto.INT64, [], [c.pad_id]),
                 helper.make_tensor("num_return_sequences", TensorProto.INT32, [1], [1]),
                 helper.make_tensor("vocab_mask", TensorProto.INT32, [c.vocab_size], vocab_mask)]
    inputs = [helper.make_tensor_value_info("source_ids", TensorProto.INT64, ["batch", "source_len"]),
              *(helper.make_tensor_value_info(n, TensorProto.INT32, [1])
                for n in ("max_length", "min_length", "num_beams")),
              helper.make_tensor_value_info("length_penalty", TensorProto.FLOAT, [1])]
    outputs = [helper.make_tensor_value_info("sequences", TensorProto.INT32, ["batch", 1, "max_length"]),
               helper.make_tensor_value_info("sequences_scores", TensorProto.FLOAT, ["batch", 1])]
    graph = helper.make_graph(nodes, "beam_search", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9  # as server/runtime/graphs.py's helper graphs: what recent ONNX Runtime releases read
    return model.SerializeToString(), c


class BeamSearchOp:
    """The operator model in one ONNX Runtime session, decoding to exactly `length` tokens."""

    def __init__(self, version_dir: Path, config: SessionConfig) -> None:
        model, self.config = beam_search_model(version_dir)
        self.session = create_session(model, config)
        self.streams = config.streams
        self.pool = ThreadPoolExecutor(config.streams, thread_name_prefix="op-stream")

    def run(self, source_ids: np.ndarray, beam: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Generated ids (B, length), without the start token, and their sum log-probabilities (B,)."""
        parts = min(self.streams, len(source_ids))
        if parts <= 1:
            return self._run(source_ids, beam, length)
        # Like our loop's streams: a batch cut into consecutive parts, decoded at the same time.
        # (An empty part would crash the operator: an integer division by zero, SIGFPE.)
        jobs = [self.pool.submit(self._run, p, beam, length) for p in np.array_split(source_ids, parts)]
        results = [job.result() for job in jobs]
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def _run(self, source_ids: np.ndarray, beam: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        # Both limits count the decoder start token: `length` generated tokens, EOS suppressed.
        sequences, scores = self.session.run(None, {
            "source_ids": source_ids, "max_length": np.array([length + 1], np.int32),
            "min_length": np.array([length + 1], np.int32), "num_beams": np.array([beam], np.int32),
            "length_penalty": np.array([1.0], np.float32)})
        assert sequences.shape[1:] == (1, length + 1) and (sequences[:, 0, 0] == self.config.bos_id).all()
        # Scores are normalised by the sequence's length, start token included (length penalty 1).
        return sequences[:, 0, 1:], scores[:, 0] * (length + 1)


# --- correctness ------------------------------------------------------------------------------
def compare(op: BeamSearchOp, graphs: OnnxGraphs, sources: list[list[int]], beam: int, length: int) -> dict:
    """The operator's best sequence against our loop's, per sentence, with their log-probabilities."""
    ids = pad_ids(sources, graphs.config.pad_id)
    theirs, their_scores = op.run(ids, beam, length)
    ours = translate_ids(graphs, sources, DecodeOptions(beam_size=beam, min_length=length, max_length=length),
                         max_batch=len(sources))
    differences = []
    score_gaps = []
    for i, (hyps, seq, score) in enumerate(zip(ours, theirs.tolist(), their_scores.tolist())):
        our_score = hyps[0].score * len(hyps[0].tokens)  # ours is normalised by the generated length
        if hyps[0].tokens == seq:
            score_gaps.append(abs(our_score - score))
            continue
        first = next(t for t, (a, b) in enumerate(zip(hyps[0].tokens, seq)) if a != b)
        differences.append({"sentence": i, "first_difference_at": first, "ours_log_prob": our_score,
                            "operator_log_prob": score, "operator_minus_ours": score - our_score})
    return {"sentences": len(sources), "beam": beam, "identical": len(sources) - len(differences),
            "identical_max_log_prob_gap": max(score_gaps, default=None), "differences": differences}


# --- timing -----------------------------------------------------------------------------------
def loop_decoder(graphs: OnnxGraphs) -> Decode:
    def decode(batch: list[list[int]], beam: int, length: int) -> None:
        hyps = translate_ids(graphs, batch, DecodeOptions(beam_size=beam, min_length=length, max_length=length),
                             max_batch=len(batch))
        assert all(len(h[0].tokens) == length for h in hyps)
    return decode


def op_decoder(op: BeamSearchOp) -> Decode:
    def decode(batch: list[list[int]], beam: int, length: int) -> None:
        op.run(pad_ids(batch, op.config.pad_id), beam, length)
    return decode


def setting_name(streams: int, threads: int) -> str:
    return f"{streams} stream{'s' * (streams > 1)} x {threads} thread{'s' * (threads > 1)}"


def time_mode(engines: dict[str, dict[str, Decode]], sources: list[list[int]], mode: dict, workload: dict) -> dict:
    """Each engine in each setting on one workload mode, and the operator's speed relative to ours."""
    figures = {engine: {name: measure_mode(decode, sources, mode, workload) for name, decode in settings.items()}
               for engine, settings in engines.items()}
    best = {engine: max(f["tokens_per_s"] for f in settings.values()) for engine, settings in figures.items()}
    ratios = {name: figures["operator"][name]["tokens_per_s"] / ours["tokens_per_s"]
              for name, ours in figures["ours"].items()}
    return {**figures, "best_tokens_per_s": best,
            "operator_vs_ours": {**ratios, "best vs best": best["operator"] / best["ours"]}}


def print_checks(checks: list[dict]) -> None:
    for check in checks:
        gap = check["identical_max_log_prob_gap"]
        print(f"beam {check['beam']}: {check['identical']}/{check['sentences']} sentences token-identical"
              + (f" (their log-probabilities differ by <= {gap:.1e})" if gap is not None else ""))
        for d in check["differences"]:
            print(f"  sentence {d['sentence']}: first differs at token {d['first_difference_at']}, log-prob "
                  f"operator {d['operator_log_prob']:.5f} vs ours {d['ours_log_prob']:.5f} "
                  f"({d['operator_minus_ours']:+.1e})")


def print_timings(timings: dict, quick: bool) -> None:
    print(f"{'mode':10} {'setting':22} {'ours tok/s':>10} {'op tok/s':>9} {'op/ours':>8}"
          + ("   (--quick: indicative only)" if quick else ""))
    for mode, t in timings.items():
        for name, ours in t["ours"].items():
            theirs = t["operator"][name]
            flag = " (disturbed)" if ours["disturbed"] or theirs["disturbed"] else ""
            print(f"{mode:10} {name:22} {ours['tokens_per_s']:10.0f} {theirs['tokens_per_s']:9.0f} "
                  f"{t['operator_vs_ours'][name]:8.2f}{flag}")
        best = t["best_tokens_per_s"]
        print(f"{mode:10} {'best vs best':22} {best['ours']:10.0f} {best['operator']:9.0f} "
              f"{t['operator_vs_ours']['best vs best']:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version_dir", type=Path, nargs="?",
                   help="an exported model version (encoder.onnx, decoder.onnx, manifest.json); default: the "
                        "workload's --arch model, fp32, as `make bench` exports it (built on first use)")
    p.add_argument("--arch", choices=("small", "base"), default="small")
    p.add_argument("--workload", type=Path, default=WORKLOAD)
    p.add_argument("--quick", action="store_true", help="smoke run: few sentences, one pass, nothing written")
    p.add_argument("--out", type=Path, help="default: bench/results/beam_search_op-<arch>.json")
    args = p.parse_args()

    workload = load_workload(args.workload)
    if args.version_dir is None:
        arch_dir = prepare_arch(workload, args.arch, ROOT / "bench" / ".cache", ROOT / "data" / "en-es" / "train.tsv")
        args.version_dir = arch_dir / "models" / "fp32" / "1"
    args.out = args.out or ROOT / "bench" / "results" / f"beam_search_op-{args.arch}.json"
    length = workload["inputs"]["target_length"]
    modes = [m for m in workload["modes"] if m["name"] in MODES]
    if args.quick:
        modes = [{**m, "sentences": QUICK_SENTENCES[m["name"]], "batch": min(m["batch"], QUICK_SENTENCES[m["name"]])}
                 for m in modes]
        workload = {**workload, "timing": {"warmup_sentences": max(QUICK_SENTENCES.values()), "timed_reps": 1}}
    inter = workload["threads"]["inter_op"]
    # Both engines in decode_speed's settings for our runtime, within the workload's thread budget.
    engines: dict[str, dict[str, Decode]] = {"ours": {}, "operator": {}}
    runners: list[tuple[OnnxGraphs, BeamSearchOp]] = []
    for streams, threads in ORT_SETTINGS:
        config = SessionConfig(device="cpu", streams=streams, intra_op_threads=threads, inter_op_threads=inter)
        graphs, op = OnnxGraphs(args.version_dir, config), BeamSearchOp(args.version_dir, config)
        engines["ours"][setting_name(streams, threads)] = loop_decoder(graphs)
        engines["operator"][setting_name(streams, threads)] = op_decoder(op)
        runners.append((graphs, op))
    graphs, op = runners[0]
    sources = workload_sources(workload, eos_id=graphs.config.eos_id)

    checks = [compare(op, graphs, sources[:CHECK_SENTENCES], beam, length) for beam in (4, 1)]
    print_checks(checks)
    timings = {mode["name"]: time_mode(engines, sources, mode, workload) for mode in modes}
    print_timings(timings, args.quick)
    if args.quick:
        return
    report = {"version_dir": str(args.version_dir), "workload": str(args.workload),
              "workload_version": workload["version"], "machine": machine(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "operator": {"model_type": 1, "max_length": length + 1, "min_length": length + 1,
                           "length_penalty": 1.0, "early_stopping": 0},
              "correctness": checks, "timings": timings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
