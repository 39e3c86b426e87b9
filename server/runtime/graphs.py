"""A model version's ONNX graphs behind two calls: encode a batch, run one decoder step.

Input and output names and shapes are the contract in server/runtime/graph_io.py: every cache is a
list of tensors, one (B, H, C, Dh) tensor per decoder layer, each row's entries in its first
columns (right-padded). The decoder step only reads the self-attention cache and returns the
new position's keys and values; `append` writes them in place. No torch here.

Where the cache lives (SessionConfig.device_cache): as numpy arrays, or as ONNX Runtime values
on the execution device. On CUDA it stays on the GPU from step to step through I/O binding:
new positions are written into it in place by a TensorScatter graph, rows are moved, trimmed
and joined by small graphs on the device, and only the best tokens and their scores come back
to the host. The decode loop (server/runtime/engine.py) never looks inside a cache; it changes
one only through the cache operations here, so both placements share that loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.config import ModelConfig
from server.runtime.graph_io import MAX_CANDIDATES, SHORTLIST_INPUTS, cache_names, own_sources
from server.runtime.repository import Manifest, load_manifest
from server.runtime.sessions import CUDA, SessionConfig, create_session
from server.runtime.shortlist import Shortlist

Tensor = np.ndarray | ort.OrtValue
Cache = list[Tensor]  # one (B, H, C, Dh) tensor per decoder layer
Restricted = tuple[np.ndarray, np.ndarray, np.ndarray]  # a shortlist step's vocabulary, output_rows, allowed


@dataclass
class StepOutput:
    top_log_probs: np.ndarray  # (B, k) float32: the best next tokens' log-probabilities, best first
    top_ids: np.ndarray  # (B, k) int64
    keys: Cache  # this position's keys, (B, H, 1, Dh) per layer, for `append`
    values: Cache


def _graph(nodes: list, inputs: list, outputs: list, name: str, opset: int = 18) -> bytes:
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    # The oldest IR version that carries the opset: what the most ONNX Runtime releases read.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model.SerializeToString()


def select_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `rows` (N,) int64, `columns` (2,) int64 [start, stop) and `count` tensors
    (B, H, P, Dh): each tensor's rows in that order, columns start..stop-1 of its axis 2."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Constant", [], ["zero"], value_ints=[0]),
             helper.make_node("Constant", [], ["one"], value_ints=[1]),
             helper.make_node("Constant", [], ["two"], value_ints=[2]),
             helper.make_node("Slice", ["columns", "zero", "one"], ["start"]),
             helper.make_node("Slice", ["columns", "one", "two"], ["stop"]),
             helper.make_node("Constant", [], ["axis"], value_ints=[2])]
    for i in range(count):
        nodes += [helper.make_node("Gather", [f"x{i}", "rows"], [f"g{i}"], axis=0),
                  helper.make_node("Slice", [f"g{i}", "start", "stop", "axis"], [f"y{i}"])]
    return _graph(nodes,
                  [helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"]),
                   helper.make_tensor_value_info("columns", TensorProto.INT64, [2]),
                   *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "select")


def join_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `count` pairs of tensors a_i (A, H, Pa, Dh), b_i (B, H, Pb, Dh) and the
    zero padding on the right of axis 2 of each, `pad_a` and `pad_b` (8,) int64 in ONNX Pad
    order: each pair padded to one width and stacked, a's rows first."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = []
    for i in range(count):
        nodes += [helper.make_node("Pad", [f"a{i}", "pad_a"], [f"pa{i}"]),
                  helper.make_node("Pad", [f"b{i}", "pad_b"], [f"pb{i}"]),
                  helper.make_node("Concat", [f"pa{i}", f"pb{i}"], [f"y{i}"], axis=0)]
    return _graph(nodes,
                  [helper.make_tensor_value_info("pad_a", TensorProto.INT64, [8]),
                   helper.make_tensor_value_info("pad_b", TensorProto.INT64, [8]),
                   *(helper.make_tensor_value_info(f"a{i}", element, None) for i in range(count)),
                   *(helper.make_tensor_value_info(f"b{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "join")


def write_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `rows` (N, 1) int64, `count` tensors x_i (B, H, P, Dh) and as many u_i
    (N, H, P, Dh): each x_i with its rows `rows` replaced by u_i's."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _graph([helper.make_node("ScatterND", [f"x{i}", "rows", f"u{i}"], [f"y{i}"]) for i in range(count)],
                  [helper.make_tensor_value_info("rows", TensorProto.INT64, ["n", 1]),
                   *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count)),
                   *(helper.make_tensor_value_info(f"u{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "write")


def append_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `positions` (B,) int64, `count` tensors x_i (B, H, C, Dh) and as many n_i
    (B, H, 1, Dh): each x_i with column positions[b] of row b set to n_i's row b. TensorScatter
    writes in place when its output is bound to its input's buffer."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _graph([helper.make_node("TensorScatter", [f"x{i}", f"n{i}", "positions"], [f"y{i}"], axis=2)
                   for i in range(count)],
                  [helper.make_tensor_value_info("positions", TensorProto.INT64, ["b"]),
                   *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count)),
                   *(helper.make_tensor_value_info(f"n{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "append", opset=24)


def place_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `rows` (N, 1) int64, `pads` (8,) int64 in ONNX Pad order, `count` tensors
    x_i (E, H, S, Dh) and as many u_i (N, H, s, Dh): each x_i with its rows `rows` replaced by
    u_i padded with zeros to S columns. With y_i bound to x_i's buffer it writes in place."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = []
    for i in range(count):
        nodes += [helper.make_node("Pad", [f"u{i}", "pads"], [f"p{i}"]),
                  helper.make_node("ScatterND", [f"x{i}", "rows", f"p{i}"], [f"y{i}"])]
    return _graph(nodes,
                  [helper.make_tensor_value_info("rows", TensorProto.INT64, ["n", 1]),
                   helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
                   *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count)),
                   *(helper.make_tensor_value_info(f"u{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "place")


def copy_rows_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `targets` (N, 1) int64, `sources` (N,) int64 and `count` tensors x_i: each
    x_i with rows `targets` replaced by rows `sources` as they were before any moved (the
    Gather copies them out first). With y_i bound to x_i's buffer it writes in place."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = []
    for i in range(count):
        nodes += [helper.make_node("Gather", [f"x{i}", "sources"], [f"g{i}"], axis=0),
                  helper.make_node("ScatterND", [f"x{i}", "targets", f"g{i}"], [f"y{i}"])]
    return _graph(nodes,
                  [helper.make_tensor_value_info("targets", TensorProto.INT64, ["n", 1]),
                   helper.make_tensor_value_info("sources", TensorProto.INT64, ["n"]),
                   *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count))],
                  [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)], "copy_rows")


def zeros_graph(dtype: np.dtype) -> bytes:
    """A graph taking `shape` (4,) int64: a tensor of zeros of that shape, made on the device
    that runs it (no host array of its size)."""
    from onnx import TensorProto, helper, numpy_helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _graph([helper.make_node("ConstantOfShape", ["shape"], ["y"],
                                    value=numpy_helper.from_array(np.zeros(1, dtype)))],
                  [helper.make_tensor_value_info("shape", TensorProto.INT64, [4])],
                  [helper.make_tensor_value_info("y", element, None)], "zeros")


def _copy_rows(source: np.ndarray, rows: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """out[i, :, :stop - start] = source[rows[i], :, start:stop], copying each value once: numpy's
    fancy indexing of a column slice would first copy the slice, then the gathered rows (measured:
    gigabytes of transient arrays a minute under load)."""
    kept = stop - start
    if len(rows) == source.shape[0] and np.array_equal(rows, np.arange(len(rows))):
        out[:, :, :kept] = source[:, :, start:stop]
    elif kept == source.shape[2] == out.shape[2]:
        np.take(source, rows, axis=0, out=out, mode="clip")  # "raise" would buffer `out`
    else:
        for i, row in enumerate(rows.tolist()):
            out[i, :, :kept] = source[row, :, start:stop]


def cache_shape(tensor: Tensor) -> tuple[int, ...]:
    """A cache tensor's shape, host array or device value."""
    return tuple(tensor.shape) if isinstance(tensor, np.ndarray) else tuple(tensor.shape())


class OnnxGraphs:
    """The encoder and decoder-step sessions of one verified model version."""

    def __init__(self, version_dir: str | Path, session_config: SessionConfig = SessionConfig(), *,
                 manifest: Manifest | None = None) -> None:
        self.dir = Path(version_dir)
        self.manifest = manifest or load_manifest(self.dir)
        self.config: ModelConfig = self.manifest.config
        self.session_config = session_config
        # The encoder runs once per admission, on batches of any size: without an arena its
        # intermediates (tens of MB for many long sources) go back when the call ends instead of
        # staying reserved (the service's peak memory -24 MB; the same speed for 1 to 32
        # sources of 25 tokens, 8% slower for 32 of 60: docs/benchmarks.md). The step, called
        # every token with the same shapes, keeps its arena.
        self.encoder = create_session(self.dir / self.manifest.graphs["encoder"], session_config, arena=False)
        self.decoder = create_session(self.dir / self.manifest.graphs["decoder"], session_config, step=True)
        # With a vocabulary shortlist, steps run its own decoder graph, over the output rows of
        # the tokens their sentences may produce (server/runtime/shortlist.py).
        self.shortlist: Shortlist | None = None
        if self.manifest.shortlist and session_config.shortlist:
            self.shortlist = Shortlist.load(self.dir / self.manifest.shortlist)
            self.shortlist_decoder = create_session(self.dir / self.manifest.graphs["decoder_shortlist"],
                                                    session_config, step=True)
            self._output_rows = create_session(self.dir / self.manifest.graphs["output_rows"], session_config)
        self.dtype = np.float16 if self.encoder.get_outputs()[0].type == "tensor(float16)" else np.float32
        layers = self.config.decoder_layers
        self._cross_names = cache_names("cross", layers)
        self._cache_names = cache_names("cache", layers)
        self._new_names = cache_names("new", layers)
        on_cuda = self.provider == CUDA
        self.device_cache = on_cuda if session_config.device_cache is None else session_config.device_cache
        self._device = ("cuda", 0) if on_cuda else ("cpu", 0)
        self._cache_ops: dict[tuple[str, int], ort.InferenceSession] = {}  # built on first use
        self._cache_ops_lock = threading.Lock()
        # Decoding streams: engines decoding at the same time on these sessions, one thread each.
        self.streams = session_config.streams or (1 if on_cuda else session_config.cpu_streams())
        # The decode loops that `translate_ids` calls on these graphs share, by row limit, so that
        # back-to-back calls reuse their threads (server/runtime/engine.py); they live as long as the graphs.
        self.schedulers: dict[int, object] = {}

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graphs."""
        return self.decoder.get_providers()[0]

    @property
    def sessions(self) -> dict[str, ort.InferenceSession]:
        """Every session these graphs hold so far: "encoder", "decoder", and each cache operation
        built on first use ("append 2": appending to 2 tensors)."""
        with self._cache_ops_lock:
            ops = {f"{kind} {count}": session for (kind, count), session in self._cache_ops.items()}
        return {"encoder": self.encoder, "decoder": self.decoder, **ops}

    def _run(self, session: ort.InferenceSession, feeds: dict[str, Tensor], host: list[str],
             cache: list[str]) -> list[Tensor]:
        """Run a graph: the `host` outputs come back as numpy arrays, the `cache` outputs stay
        where the cache lives (device values with device_cache, else numpy arrays)."""
        if not self.device_cache:
            return session.run(host + cache, feeds)
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in host:
            binding.bind_output(name, "cpu")
        for name in cache:
            binding.bind_output(name, *self._device)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return [value.numpy() for value in outputs[: len(host)]] + list(outputs[len(host):])

    def encode(self, source_ids: np.ndarray) -> tuple[Cache, Cache]:
        """(B, S) int64 -> cross-attention keys and values, (B, H, S, Dh) per layer."""
        outputs = self._run(self.encoder, {"source_ids": source_ids}, [], self._cross_names)
        layers = self.config.decoder_layers
        return outputs[:layers], outputs[layers:]

    def empty_cache(self, batch: int, width: int = 0) -> tuple[Cache, Cache]:
        """A self-attention cache of `width` zero columns (room for that many positions). Host
        arrays on every device: the cache operations move them where the cache lives."""
        c = self.config
        shape = (batch, c.heads, width, c.head_dim)
        return ([np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)],
                [np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)])

    def select(self, cache: Cache, rows: Sequence[int] | np.ndarray, columns: tuple[int, int] | None = None) -> Cache:
        """The cache's batch rows `rows` in that order, and of its axis 2 (positions or source
        tokens) the columns [start, stop).

        Selecting every row in place and every column returns the cache as it is, copying nothing.
        """
        if not cache:
            return cache
        rows = np.asarray(rows, dtype=np.int64)
        batch, _, width, _ = cache_shape(cache[0])
        start, stop = columns or (0, width)
        if (start, stop) == (0, width) and len(rows) == batch and np.array_equal(rows, np.arange(batch)):
            return cache
        if isinstance(cache[0], np.ndarray):
            out = [np.empty((len(rows), t.shape[1], stop - start, t.shape[3]), t.dtype) for t in cache]
            for old, new in zip(cache, out):
                _copy_rows(old, rows, start, stop, new)
            return out
        feeds = {"rows": rows, "columns": np.array([start, stop], dtype=np.int64)}
        feeds.update((f"x{i}", t) for i, t in enumerate(cache))
        return self._run(self._cache_op("select", len(cache)), feeds, [], [f"y{i}" for i in range(len(cache))])

    def join(self, first: Cache, second: Cache, width: int) -> Cache:
        """The rows of `first` then those of `second`, each padded on the right of axis 2 with
        zeros to `width` columns."""
        if isinstance(first[0], np.ndarray) and isinstance(second[0], np.ndarray):
            return self.regroup(first, np.arange(first[0].shape[0]), (0, first[0].shape[2]), second, width)
        pads = [np.array([0, 0, 0, 0, 0, 0, width - cache_shape(t[0])[2], 0], dtype=np.int64) for t in (first, second)]
        feeds = {"pad_a": pads[0], "pad_b": pads[1]}
        feeds.update((f"a{i}", t) for i, t in enumerate(first))
        feeds.update((f"b{i}", t) for i, t in enumerate(second))
        return self._run(self._cache_op("join", len(first)), feeds, [], [f"y{i}" for i in range(len(first))])

    def write(self, cache: Cache, rows: np.ndarray, new: Cache) -> Cache:
        """The cache with its batch rows `rows` replaced by `new`'s rows (zero-padded along axis
        2 to the cache's width): host arrays in place, device values by a scatter graph."""
        if isinstance(cache[0], np.ndarray) and isinstance(new[0], np.ndarray):
            for t, n in zip(cache, new):
                t[rows] = 0
                t[rows, :, : n.shape[2]] = n
            return cache
        width = cache_shape(cache[0])[2]
        if cache_shape(new[0])[2] != width:
            nothing = [np.zeros((0, *cache_shape(t)[1:2], 0, *cache_shape(t)[3:]), self.dtype) for t in new]
            new = self.join(new, nothing, width)
        feeds = {"rows": np.asarray(rows, np.int64).reshape(-1, 1)}
        feeds.update((f"x{i}", t) for i, t in enumerate(cache))
        feeds.update((f"u{i}", t) for i, t in enumerate(new))
        return self._run(self._cache_op("write", len(cache)), feeds, [], [f"y{i}" for i in range(len(cache))])

    def move(self, cache: Cache, targets: np.ndarray, sources: np.ndarray, columns: np.ndarray | None = None) -> Cache:
        """The cache with rows `targets` replaced by rows `sources` as they were before any of
        them moved (beams continuing other beams): host arrays in place. columns[i] = (start,
        stop): target i takes only these columns of its source (it already holds the same ones
        before `start`, and the step masks those from `stop` on); all of them when None."""
        if not len(targets):
            return cache
        if isinstance(cache[0], np.ndarray):
            # One gather and one scatter of (row, column) pairs per tensor: only the columns
            # that differ move (docs/benchmarks.md), and the gather reads every source before
            # the scatter writes any target.
            start, stop = (np.zeros_like(targets), np.full_like(targets, cache[0].shape[2])) if columns is None \
                else (columns[:, 0], columns[:, 1])
            counts = np.maximum(stop - start, 0)
            first = np.repeat(np.cumsum(counts) - counts, counts)  # each pair's offset within its row's run
            cols = np.repeat(start, counts) + np.arange(counts.sum()) - first
            heads = cache[0].shape[1]
            # As (row x head, column) pairs of a (B * H, C, Dh) view: each pair one contiguous vector.
            to = (np.repeat(targets, counts)[:, None] * heads + np.arange(heads)).ravel()
            source = (np.repeat(sources, counts)[:, None] * heads + np.arange(heads)).ravel()
            cols = np.repeat(cols, heads)
            for t in cache:
                flat = t.reshape(-1, *t.shape[2:])
                flat[to, cols] = flat[source, cols]
            return cache
        return self.write(cache, targets, self.select(cache, sources))

    def append(self, cache: Cache, positions: np.ndarray, new: Cache) -> Cache:
        """The cache with each row's new position written at column positions[b], in place.

        new: (B, H, 1, Dh) per layer, a decoder step's keys or values; positions[b] < the
        cache's width.
        """
        if isinstance(cache[0], np.ndarray) and isinstance(new[0], np.ndarray):
            rows = np.arange(len(positions))
            for t, n in zip(cache, new):
                t[rows, :, positions] = n[:, :, 0]
            return cache
        cache = [t if isinstance(t, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(t, *self._device) for t in cache]
        session = self._cache_op("append", len(cache))
        binding = session.io_binding()
        binding.bind_cpu_input("positions", np.asarray(positions, np.int64))
        for i, (t, n) in enumerate(zip(cache, new)):
            binding.bind_ortvalue_input(f"x{i}", t)
            binding.bind_ortvalue_input(f"n{i}", n)
            binding.bind_ortvalue_output(f"y{i}", t)  # the same buffer: TensorScatter writes in place
        session.run_with_iobinding(binding)
        return cache

    def regroup(self, cache: Cache, rows: Sequence[int], columns: tuple[int, int], new: Cache | None,
                width: int) -> Cache:
        """`join(select(cache, rows, columns), new, width)`, or just the `select` without `new`;
        on host arrays in one copy of each tensor."""
        if new is None:
            return self.select(cache, rows, columns)
        if not cache or not isinstance(cache[0], np.ndarray) or not isinstance(new[0], np.ndarray):
            return self.join(self.select(cache, rows, columns), new, width)
        rows = np.asarray(rows, dtype=np.int64)
        start, stop = columns
        out = []
        for old, added in zip(cache, new):
            t = np.zeros((len(rows) + added.shape[0], old.shape[1], width, old.shape[3]), old.dtype)
            _copy_rows(old, rows, start, stop, t[: len(rows)])
            t[len(rows):, :, : added.shape[2]] = added
            out.append(t)
        return out

    def _cache_op(self, kind: str, count: int) -> ort.InferenceSession:
        with self._cache_ops_lock:
            if (kind, count) not in self._cache_ops:
                build = {"select": select_graph, "join": join_graph, "write": write_graph,
                         "append": append_graph}[kind]
                self._cache_ops[kind, count] = create_session(build(count, self.dtype), self.session_config)
            return self._cache_ops[kind, count]

    def output_rows(self, vocabulary: np.ndarray) -> np.ndarray:
        """The output projection's rows of the tokens `vocabulary` (V', D): the shortlist step's input."""
        return self._output_rows.run(["output_rows"], {"vocabulary": vocabulary})[0]

    def _inputs(self, tokens: np.ndarray, positions: np.ndarray, eos_allowed: np.ndarray, cross_keys: Cache,
                cross_values: Cache, source_mask: np.ndarray, cache_keys: Cache, cache_values: Cache, *,
                candidates: int = MAX_CANDIDATES, query: tuple[np.ndarray, np.ndarray] | None = None,
                shortlist: Restricted | None = None) -> dict[str, Tensor]:
        query_grid, query_slots = query if query is not None else own_sources(len(tokens))
        feeds = {"tokens": tokens, "positions": positions, "source_mask": source_mask, "eos_allowed": eos_allowed,
                 "candidates": np.zeros(candidates, np.int64), "query_grid": query_grid, "query_slots": query_slots}
        if shortlist is not None:
            feeds.update(zip(SHORTLIST_INPUTS, shortlist))
        feeds.update(zip(self._cross_names, [*cross_keys, *cross_values]))
        feeds.update(zip(self._cache_names, [*cache_keys, *cache_values]))
        return feeds

    def step(self, tokens: np.ndarray, positions: np.ndarray, eos_allowed: np.ndarray, cross_keys: Cache,
             cross_values: Cache, source_mask: np.ndarray, cache_keys: Cache, cache_values: Cache, *,
             candidates: int = MAX_CANDIDATES, query: tuple[np.ndarray, np.ndarray] | None = None,
             shortlist: Restricted | None = None) -> StepOutput:
        """One decoder step for tokens (B, 1); row b has positions[b] cached tokens, the first
        columns of the (B, H, C, Dh) cache, which the step reads and does not change. The
        cross-attention caches hold one entry per source (G, H, S, Dh); `query` = (query_grid,
        query_slots) says which rows read which entry (graph_io); None: row b reads entry b.

        The graph applies the decoding rules (no PAD or BOS; EOS only where `eos_allowed`) and
        returns each row's best `candidates` tokens (graph_io.candidates_for) and this
        position's keys and values; the full logits are not fetched. `shortlist` = (vocabulary,
        output_rows, allowed): the step over a vocabulary shortlist (graph_io).
        """
        feeds = self._inputs(tokens, positions, eos_allowed, cross_keys, cross_values, source_mask, cache_keys,
                             cache_values, candidates=candidates, query=query, shortlist=shortlist)
        session = self.decoder if shortlist is None else self.shortlist_decoder
        top_log_probs, top_ids, *new = self._run(session, feeds, ["top_log_probs", "top_ids"], self._new_names)
        layers = self.config.decoder_layers
        return StepOutput(top_log_probs.astype(np.float32, copy=False), top_ids, new[:layers], new[layers:])

    def step_logits(self, *args, **kwargs) -> tuple[np.ndarray, Cache, Cache]:
        """Logits (B, V) and the new position's keys and values of one step (arguments as
        `step`): for parity checks."""
        layers = self.config.decoder_layers
        session = self.decoder if kwargs.get("shortlist") is None else self.shortlist_decoder
        logits, *new = self._run(session, self._inputs(*args, **kwargs), ["logits"], self._new_names)
        return logits, new[:layers], new[layers:]
