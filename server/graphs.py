"""A model version's ONNX graphs behind two calls: encode a batch, run one decoder step.

Input and output names and shapes are those documented in export/graphs.py: every cache is a
list of arrays, one (B, H, P, Dh) array per decoder layer. No torch here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import ModelConfig
from server.repository import Manifest, load_manifest
from server.sessions import CUDA, SessionConfig, create_session

Cache = list[np.ndarray]  # one (B, H, P, Dh) array per decoder layer


def cache_names(prefix: str, layers: int) -> list[str]:
    """Names of a per-layer cache in a graph: e.g. past_key_0 .. past_key_{L-1}, then the values."""
    return [f"{prefix}_{kind}_{i}" for kind in ("key", "value") for i in range(layers)]


@dataclass
class StepOutput:
    top_log_probs: np.ndarray  # (B, TOP_K) float32: the best next tokens' log-probabilities, best first
    top_ids: np.ndarray  # (B, TOP_K) int64
    keys: Cache  # the cache for the next step, (B, H, P+1, Dh) per layer
    values: Cache


class OnnxGraphs:
    """The encoder and decoder-step sessions of one verified model version."""

    def __init__(self, version_dir: str | Path, session_config: SessionConfig = SessionConfig(), *,
                 manifest: Manifest | None = None) -> None:
        self.dir = Path(version_dir)
        self.manifest = manifest or load_manifest(self.dir)
        self.config: ModelConfig = self.manifest.config
        self.encoder = create_session(self.dir / self.manifest.graphs["encoder"], session_config)
        self.decoder = create_session(self.dir / self.manifest.graphs["decoder"], session_config)
        self.dtype = np.float16 if self.encoder.get_outputs()[0].type == "tensor(float16)" else np.float32
        layers = self.config.decoder_layers
        self._cross_names = cache_names("cross", layers)
        self._past_names = cache_names("past", layers)
        self._step_outputs = ["top_log_probs", "top_ids", *cache_names("present", layers)]
        # Parts of one batch decoded at once (SessionConfig.streams); their threads live here.
        self.streams = session_config.streams or (1 if self.provider == CUDA else session_config.cpu_streams())
        self.pool = ThreadPoolExecutor(self.streams, thread_name_prefix="stream") if self.streams > 1 else None

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graphs."""
        return self.decoder.get_providers()[0]

    def encode(self, source_ids: np.ndarray) -> tuple[Cache, Cache]:
        """(B, S) int64 -> cross-attention keys and values, (B, H, S, Dh) per layer."""
        outputs = self.encoder.run(self._cross_names, {"source_ids": source_ids})
        layers = self.config.decoder_layers
        return outputs[:layers], outputs[layers:]

    def empty_cache(self, batch: int) -> tuple[Cache, Cache]:
        c = self.config
        shape = (batch, c.heads, 0, c.head_dim)
        return ([np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)],
                [np.zeros(shape, self.dtype) for _ in range(c.decoder_layers)])

    def _inputs(self, tokens: np.ndarray, cross_keys: Cache, cross_values: Cache, source_mask: np.ndarray,
                past_keys: Cache, past_values: Cache, eos_allowed: bool) -> dict[str, np.ndarray]:
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
        top_log_probs, top_ids, *cache = self.decoder.run(
            self._step_outputs, self._inputs(tokens, cross_keys, cross_values, source_mask, past_keys, past_values,
                                             eos_allowed))
        layers = self.config.decoder_layers
        return StepOutput(top_log_probs.astype(np.float32, copy=False), top_ids, cache[:layers], cache[layers:])

    def step_logits(self, *args, **kwargs) -> tuple[np.ndarray, Cache, Cache]:
        """Logits (B, V) and the grown cache of one step (arguments as `step`): for parity checks."""
        layers = self.config.decoder_layers
        logits, *cache = self.decoder.run(["logits", *cache_names("present", layers)], self._inputs(*args, **kwargs))
        return logits, cache[:layers], cache[layers:]
