"""The two ONNX graphs of a translation model, as PyTorch modules to export.

Decoding needs the encoder once per source and the decoder once per generated token, so the
model is exported as two graphs over the model's own incremental API (model/transformer.py):

encoder.onnx
    in   source_ids      int64   (batch, source_len)   EOS-terminated, right-padded with pad_id
    out  cross_keys      float32 (layers, batch, heads, source_len, head_dim)
         cross_values    float32 (layers, batch, heads, source_len, head_dim)

decoder.onnx (one step)
    in   tokens          int64   (batch, 1)            the previous token (BOS at step 0)
         cross_keys      float32 (layers, batch, heads, source_len, head_dim)
         cross_values    float32 (layers, batch, heads, source_len, head_dim)
         source_mask     bool    (batch, source_len)   True at real source tokens
         past_keys       float32 (layers, batch, heads, past_len, head_dim)
         past_values     float32 (layers, batch, heads, past_len, head_dim)
    out  logits          float32 (batch, vocab)         next-token logits
         present_keys    float32 (layers, batch, heads, past_len + 1, head_dim)
         present_values  float32 (layers, batch, heads, past_len + 1, head_dim)

One decoder graph serves every step, the first included: at step 0 the cache has past_len 0.
A separate first-step graph would duplicate every decoder weight in the artifact for no gain,
since an empty cache costs nothing in Concat. The position of the new token is past_len, read
from the cache's shape inside the graph, so no position input can disagree with the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from model.transformer import Transformer

ENCODER_INPUTS = ["source_ids"]
ENCODER_OUTPUTS = ["cross_keys", "cross_values"]
DECODER_INPUTS = ["tokens", "cross_keys", "cross_values", "source_mask", "past_keys", "past_values"]
DECODER_OUTPUTS = ["logits", "present_keys", "present_values"]


class EncoderGraph(nn.Module):
    """Source ids -> the cross-attention keys and values of every decoder layer."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.cross_kv(self.model.encode(source_ids))


class DecoderStepGraph(nn.Module):
    """One decoding step: the previous token and the cache -> next-token logits and the grown cache."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: torch.Tensor,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
        source_mask: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, keys, values = self.model.decode(tokens, cross_keys, cross_values, source_mask, past_keys, past_values)
        return logits[:, -1], keys, values
