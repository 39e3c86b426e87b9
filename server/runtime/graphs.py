"""A model version's ONNX graphs behind two calls: encode a batch, run one decoder step.

Input and output names and shapes are the contract in server/runtime/graph_io.py: every cache is a
list of tensors, one (B, H, P, Dh) tensor per decoder layer. No torch here.

Where the cache lives (SessionConfig.device_cache): as numpy arrays, or as ONNX Runtime values
on the execution device. On CUDA it stays on the GPU from step to step through I/O binding:
each step's `present_*` outputs are bound as the next step's `past_*` inputs, beams reorder
its rows with a small gather graph on the device, and only the best tokens and their scores
come back to the host. The decode loop (server/runtime/decoding.py) never looks inside a cache; it
reorders one only through `rows`, so both placements share that one loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.config import ModelConfig
from server.runtime.graph_io import cache_names
from server.runtime.repository import Manifest, load_manifest
from server.runtime.sessions import CUDA, SessionConfig, create_session

Tensor = np.ndarray | ort.OrtValue
Cache = list[Tensor]  # one (B, H, P, Dh) tensor per decoder layer


@dataclass
class StepOutput:
    top_log_probs: np.ndarray  # (B, TOP_K) float32: the best next tokens' log-probabilities, best first
    top_ids: np.ndarray  # (B, TOP_K) int64
    keys: Cache  # the cache for the next step, (B, H, P+1, Dh) per layer
    values: Cache


def row_gather_graph(count: int, dtype: np.dtype) -> bytes:
    """A graph taking `rows` (N,) int64 and `count` tensors, returning each tensor's rows in that order."""
    from onnx import TensorProto, helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("Gather", [f"x{i}", "rows"], [f"y{i}"], axis=0) for i in range(count)],
        "row_gather",
        [helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"]),
         *(helper.make_tensor_value_info(f"x{i}", element, None) for i in range(count))],
        [helper.make_tensor_value_info(f"y{i}", element, None) for i in range(count)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what ONNX Runtime releases of the last two years all read
    return model.SerializeToString()


class OnnxGraphs:
    """The encoder and decoder-step sessions of one verified model version."""

    def __init__(self, version_dir: str | Path, session_config: SessionConfig = SessionConfig(), *,
                 manifest: Manifest | None = None) -> None:
        self.dir = Path(version_dir)
        self.manifest = manifest or load_manifest(self.dir)
        self.config: ModelConfig = self.manifest.config
        self.session_config = session_config
        self.encoder = create_session(self.dir / self.manifest.graphs["encoder"], session_config)
        self.decoder = create_session(self.dir / self.manifest.graphs["decoder"], session_config)
        self.dtype = np.float16 if self.encoder.get_outputs()[0].type == "tensor(float16)" else np.float32
        layers = self.config.decoder_layers
        self._cross_names = cache_names("cross", layers)
        self._past_names = cache_names("past", layers)
        self._present_names = cache_names("present", layers)
        on_cuda = self.provider == CUDA
        self.device_cache = on_cuda if session_config.device_cache is None else session_config.device_cache
        self._device = ("cuda", 0) if on_cuda else ("cpu", 0)
        self._gathers: dict[int, ort.InferenceSession] = {}  # by tensor count, built on first use
        self._gathers_lock = threading.Lock()
        # Parts of one batch decoded at once (SessionConfig.streams); their threads live here.
        self.streams = session_config.streams or (1 if on_cuda else session_config.cpu_streams())
        self.pool = ThreadPoolExecutor(self.streams, thread_name_prefix="stream") if self.streams > 1 else None

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graphs."""
        return self.decoder.get_providers()[0]

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

    def empty_cache(self, batch: int) -> tuple[Cache, Cache]:
        """The cache before the first step (past_len 0). Empty host arrays on every device: binding
        one copies nothing."""
        c = self.config
        shape = (batch, c.heads, 0, c.head_dim)
        return ([np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)],
                [np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)])

    def rows(self, index: Sequence[int] | np.ndarray, *caches: Cache) -> tuple[Cache, ...]:
        """Each cache's batch rows `index`, in that order: beams reordered, finished rows dropped.

        An index that keeps every row in place returns the caches as they are, copying nothing.
        """
        index = np.asarray(index, dtype=np.int64)
        tensors = [t for cache in caches for t in cache]
        if not tensors:
            return caches
        first = tensors[0]
        batch = first.shape[0] if isinstance(first, np.ndarray) else first.shape()[0]
        if len(index) == batch and np.array_equal(index, np.arange(batch)):
            return caches
        if isinstance(first, np.ndarray):
            gathered = [t[index] for t in tensors]
        else:
            names = [f"x{i}" for i in range(len(tensors))]
            gathered = self._run(self._gather(len(tensors)), {"rows": index, **dict(zip(names, tensors))}, [],
                                 [f"y{i}" for i in range(len(tensors))])
        out, start = [], 0
        for cache in caches:
            out.append(gathered[start: start + len(cache)])
            start += len(cache)
        return tuple(out)

    def _gather(self, count: int) -> ort.InferenceSession:
        with self._gathers_lock:
            if count not in self._gathers:
                self._gathers[count] = create_session(row_gather_graph(count, self.dtype), self.session_config)
            return self._gathers[count]

    def _inputs(self, tokens: np.ndarray, cross_keys: Cache, cross_values: Cache, source_mask: np.ndarray,
                past_keys: Cache, past_values: Cache, eos_allowed: bool) -> dict[str, Tensor]:
        feeds = {"tokens": tokens, "source_mask": source_mask, "eos_allowed": np.array(eos_allowed)}
        feeds.update(zip(self._cross_names, [*cross_keys, *cross_values]))
        feeds.update(zip(self._past_names, [*past_keys, *past_values]))
        return feeds

    def step(self, tokens: np.ndarray, cross_keys: Cache, cross_values: Cache, source_mask: np.ndarray,
             past_keys: Cache, past_values: Cache, eos_allowed: bool) -> StepOutput:
        """One decoder step for tokens (B, 1) after past_len cached positions.

        The graph applies the decoding rules (no PAD or BOS; EOS only if `eos_allowed`) and
        returns each row's best tokens; the full logits are not fetched.
        """
        feeds = self._inputs(tokens, cross_keys, cross_values, source_mask, past_keys, past_values, eos_allowed)
        top_log_probs, top_ids, *cache = self._run(self.decoder, feeds, ["top_log_probs", "top_ids"],
                                                   self._present_names)
        layers = self.config.decoder_layers
        return StepOutput(top_log_probs.astype(np.float32, copy=False), top_ids, cache[:layers], cache[layers:])

    def step_logits(self, *args, **kwargs) -> tuple[np.ndarray, Cache, Cache]:
        """Logits (B, V) and the grown cache of one step (arguments as `step`): for parity checks."""
        layers = self.config.decoder_layers
        logits, *cache = self._run(self.decoder, self._inputs(*args, **kwargs), ["logits"], self._present_names)
        return logits, cache[:layers], cache[layers:]
