"""Key/value caches allocated once at their limits, and decoder steps on buckets of their rows
bound at fixed shapes: what the engine needs to run a step as a CUDA graph.

A `StaticCache` holds `slots` rows of the self-attention cache (max_positions columns) and as
many cross-attention entries (max_positions source tokens), every layer's keys and values, as
ONNX Runtime values on the execution device, allocated once and never moved: sources are
written into entries, and beams' rows (or rows and entries moving down) copied over others in
place (ScatterND with its output bound to its input's buffer). A `Bucket` is a decoder step and
an append on the cache's first `rows` slots and entries: two sessions whose symbolic dimensions
are fixed (`create_session(dimensions=...)`, so their shape computations fold to constants),
the cache bound as a prefix of its buffers by address, the per-step inputs as values changed in
place, the outputs as values made once. On CUDA both sessions of a bucket are captured as CUDA
graphs and replayed; ONNX Runtime then reads the addresses and shapes recorded at capture,
which is why nothing here is ever reallocated (docs/benchmarks.md). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from server.runtime.graph_io import MAX_CANDIDATES, QUERY_GROUP, cache_names
from server.runtime.graphs import (OnnxGraphs, Tensor, append_graph, cache_shape, copy_rows_graph, place_graph,
                                   zeros_graph)
from server.runtime.sessions import CUDA, create_session

# ONNX Runtime's type names of the step's outputs, as numpy types.
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class StaticCache:
    """The self-attention cache (`past`: keys then values, one (slots, H, max_positions, Dh)
    value per layer) and the cross-attention entries (`cross`: the same, max_positions source
    tokens), allocated once and zeroed there. A column past a row's position is masked, but its
    value still meets a zero weight in the product with the values, so it must be a finite
    number: zeros at first, a previous sentence's keys and values after."""

    def __init__(self, graphs: OnnxGraphs, slots: int) -> None:
        c = graphs.config
        self.graphs, self.slots, self.width = graphs, slots, c.max_positions
        self.device = ("cuda", 0) if graphs.provider == CUDA else ("cpu", 0)
        shape = (slots, c.heads, self.width, c.head_dim)
        zeros = create_session(zeros_graph(graphs.dtype), graphs.session_config)
        self.past = [self._zeros(zeros, shape) for _ in range(2 * c.decoder_layers)]
        self.cross = [self._zeros(zeros, shape) for _ in range(2 * c.decoder_layers)]
        self._place = create_session(place_graph(2 * c.decoder_layers, graphs.dtype), graphs.session_config)
        self._copy_rows = create_session(copy_rows_graph(2 * c.decoder_layers, graphs.dtype), graphs.session_config)

    @property
    def nbytes(self) -> int:
        return sum(t.tensor_size_in_bytes() for t in (*self.past, *self.cross))

    def place(self, entries: Sequence[int], keys: Sequence[Tensor], values: Sequence[Tensor]) -> None:
        """Write sources' cross-attention keys and values, (N, H, s, Dh) per layer, into
        `entries`, in place, zero-padded to the full width."""
        new = [*keys, *values]
        width = cache_shape(new[0])[2]
        binding = self._place.io_binding()
        binding.bind_cpu_input("rows", np.asarray(entries, np.int64).reshape(-1, 1))
        binding.bind_cpu_input("pads", np.array([0, 0, 0, 0, 0, 0, self.width - width, 0], np.int64))
        for i, (buffer, tensor) in enumerate(zip(self.cross, new)):
            binding.bind_ortvalue_input(f"x{i}", buffer)
            if isinstance(tensor, np.ndarray):
                binding.bind_cpu_input(f"u{i}", np.ascontiguousarray(tensor))
            else:
                binding.bind_ortvalue_input(f"u{i}", tensor)
            binding.bind_ortvalue_output(f"y{i}", buffer)
        self._place.run_with_iobinding(binding)

    def copy_rows(self, targets: np.ndarray, sources: np.ndarray) -> None:
        """Self-attention rows `targets` take rows `sources`' contents, in place (beams that
        continue other beams, rows moving down)."""
        self._copy(self.past, targets, sources)

    def copy_entries(self, targets: np.ndarray, sources: np.ndarray) -> None:
        """Cross-attention entries `targets` take entries `sources`' contents, in place."""
        self._copy(self.cross, targets, sources)

    def _copy(self, buffers: list[ort.OrtValue], targets: np.ndarray, sources: np.ndarray) -> None:
        if not len(targets):
            return
        binding = self._copy_rows.io_binding()
        binding.bind_cpu_input("targets", np.asarray(targets, np.int64).reshape(-1, 1))
        binding.bind_cpu_input("sources", np.asarray(sources, np.int64))
        for i, buffer in enumerate(buffers):
            binding.bind_ortvalue_input(f"x{i}", buffer)
            binding.bind_ortvalue_output(f"y{i}", buffer)
        self._copy_rows.run_with_iobinding(binding)

    def _zeros(self, zeros: ort.InferenceSession, shape: tuple[int, ...]) -> ort.OrtValue:
        """A buffer allocated on the device and zeroed there."""
        value = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.graphs.dtype, *self.device)
        binding = zeros.io_binding()
        binding.bind_cpu_input("shape", np.array(shape, np.int64))
        binding.bind_ortvalue_output("y", value)
        zeros.run_with_iobinding(binding)
        return value


class Bucket:
    """A decoder step and its append on the first `rows` slots and entries of a StaticCache,
    inputs and outputs bound once; captured as CUDA graphs where the provider is CUDA."""

    def __init__(self, cache: StaticCache, rows: int) -> None:
        graphs, c = cache.graphs, cache.graphs.config
        self.rows, layers = rows, c.decoder_layers
        capture = graphs.provider == CUDA
        dimensions = {"batch": rows, "sources": rows, "source_len": cache.width, "capacity": cache.width,
                      "query_group": QUERY_GROUP, "candidates": MAX_CANDIDATES}
        self._step = create_session(graphs.dir / graphs.manifest.graphs["decoder"], graphs.session_config,
                                    step=True, dimensions=dimensions, cuda_graph=capture)
        self._append = create_session(append_graph(2 * layers, graphs.dtype), graphs.session_config,
                                      dimensions={"b": rows}, cuda_graph=capture)
        device = name, index = cache.device
        self._types = {"tokens": np.int64, "positions": np.int64, "eos_allowed": np.bool_, "source_mask": np.bool_,
                       "candidates": np.int64, "query_grid": np.int64, "query_slots": np.int64}
        shapes = {"tokens": (rows, 1), "positions": (rows,), "eos_allowed": (rows,), "source_mask": (rows, cache.width),
                  "candidates": (MAX_CANDIDATES,), "query_grid": (rows, QUERY_GROUP), "query_slots": (rows, 2)}
        self.inputs = {key: ort.OrtValue.ortvalue_from_shape_and_type(shape, self._types[key], *device)
                       for key, shape in shapes.items()}
        types = {o.name: NUMPY_TYPES[o.type] for o in self._step.get_outputs()}
        shapes = {"top_log_probs": (rows, MAX_CANDIDATES), "top_ids": (rows, MAX_CANDIDATES)}
        shapes.update((key, (rows, c.heads, 1, c.head_dim)) for key in cache_names("new", layers))
        self.outputs = {key: ort.OrtValue.ortvalue_from_shape_and_type(shape, types[key], *device)
                        for key, shape in shapes.items()}
        prefix = (rows, c.heads, cache.width, c.head_dim)

        def bind_prefix(binding: ort.IOBinding, key: str, value: ort.OrtValue, output: bool = False) -> None:
            bind = binding.bind_output if output else binding.bind_input
            bind(key, name, index, graphs.dtype, prefix, value.data_ptr())

        self._step_binding = self._step.io_binding()
        for key, value in self.inputs.items():
            self._step_binding.bind_ortvalue_input(key, value)
        for key, value in zip(cache_names("cross", layers), cache.cross):
            bind_prefix(self._step_binding, key, value)
        for key, value in zip(cache_names("cache", layers), cache.past):
            bind_prefix(self._step_binding, key, value)
        for key, value in self.outputs.items():
            self._step_binding.bind_ortvalue_output(key, value)
        self._append_binding = self._append.io_binding()
        self._append_binding.bind_ortvalue_input("positions", self.inputs["positions"])
        for i, (value, new) in enumerate(zip(cache.past, cache_names("new", layers))):
            bind_prefix(self._append_binding, f"x{i}", value)
            self._append_binding.bind_ortvalue_input(f"n{i}", self.outputs[new])
            bind_prefix(self._append_binding, f"y{i}", value, output=True)  # in place

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One step of the bucket's rows on `feeds` (tokens, positions, eos_allowed, source_mask,
        query_grid, query_slots, each `rows` long), its keys and values appended to the cache
        in place; returns each row's best MAX_CANDIDATES log-probabilities and token ids."""
        for key, value in feeds.items():  # update_inplace copies bytes: the type must be the input's
            self.inputs[key].update_inplace(np.ascontiguousarray(value, dtype=self._types[key]))
        self._step.run_with_iobinding(self._step_binding)
        self._append.run_with_iobinding(self._append_binding)
        # Copies: on the CPU an output's numpy() is a view of the buffer the next step overwrites.
        return (np.array(self.outputs["top_log_probs"].numpy(), dtype=np.float32),
                np.array(self.outputs["top_ids"].numpy()))
