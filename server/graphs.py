"""A model version's ONNX graphs behind two calls: encode a batch, run one decoder step.

Input and output names and shapes are those documented in export/graphs.py. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import ModelConfig
from server.repository import Manifest, load_manifest
from server.sessions import SessionConfig, create_session

STEP_OUTPUTS = ["present_keys", "present_values", "top_log_probs", "top_ids"]


@dataclass
class StepOutput:
    top_log_probs: np.ndarray  # (B, TOP_K) float32: the best next tokens' log-probabilities, best first
    top_ids: np.ndarray  # (B, TOP_K) int64
    keys: np.ndarray  # (L, B, H, P+1, Dh), the cache for the next step
    values: np.ndarray


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

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graphs."""
        return self.decoder.get_providers()[0]

    def encode(self, source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) int64 -> cross-attention keys and values, (L, B, H, S, Dh) each."""
        keys, values = self.encoder.run(None, {"source_ids": source_ids})
        return keys, values

    def empty_cache(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        shape = (c.decoder_layers, batch, c.heads, 0, c.head_dim)
        return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)

    def step_inputs(self, tokens: np.ndarray, cross_keys: np.ndarray, cross_values: np.ndarray,
                    source_mask: np.ndarray, past_keys: np.ndarray, past_values: np.ndarray,
                    eos_allowed: bool) -> dict[str, np.ndarray]:
        return {"tokens": tokens, "cross_keys": cross_keys, "cross_values": cross_values, "source_mask": source_mask,
                "past_keys": past_keys, "past_values": past_values, "eos_allowed": np.array(eos_allowed)}

    def step(self, tokens: np.ndarray, cross_keys: np.ndarray, cross_values: np.ndarray, source_mask: np.ndarray,
             past_keys: np.ndarray, past_values: np.ndarray, eos_allowed: bool) -> StepOutput:
        """One decoder step for tokens (B, 1) after past_len cached positions.

        The graph applies the decoding rules (no PAD or BOS; EOS only if `eos_allowed`) and
        returns each row's best tokens; the full logits are not fetched.
        """
        keys, values, top_log_probs, top_ids = self.decoder.run(
            STEP_OUTPUTS, self.step_inputs(tokens, cross_keys, cross_values, source_mask, past_keys, past_values,
                                           eos_allowed))
        return StepOutput(top_log_probs.astype(np.float32, copy=False), top_ids, keys, values)

    def step_logits(self, *args, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits (B, V) and the grown cache of one step (arguments as `step`): for parity checks."""
        logits, keys, values = self.decoder.run(["logits", "present_keys", "present_values"],
                                                self.step_inputs(*args, **kwargs))
        return logits, keys, values
