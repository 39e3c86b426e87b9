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
         eos_allowed     bool    ()                     False while min_length is not reached
    out  logits          float32 (batch, vocab)         next-token logits
         present_keys    float32 (layers, batch, heads, past_len + 1, head_dim)
         present_values  float32 (layers, batch, heads, past_len + 1, head_dim)
         top_log_probs   float32 (batch, TOP_K)         best next-token log-probabilities, best first
         top_ids         int64   (batch, TOP_K)         their token ids

The search itself runs in the graph's last nodes: log-softmax, the decoding rules (PAD and BOS
never generated, EOS only when allowed) and top-k. A step then hands the Python loop 2 x 32
numbers per row instead of the whole vocabulary, and greedy search reads column 0. Beam
search needs each row's best 2K (K beams): the best 2K of a sentence's K*V continuations are
always among its rows' best 2K each. TOP_K = 2 * MAX_BEAM_SIZE. `logits` stays an output for
the parity gate; a decode loop does not fetch it.

One decoder graph serves every step, the first included: at step 0 the cache has past_len 0.
A separate first-step graph would duplicate every decoder weight in the artifact for no gain,
since an empty cache costs nothing in Concat. The position of the new token is past_len, read
from the cache's shape inside the graph, so no position input can disagree with the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from model.decode_options import MAX_BEAM_SIZE
from model.transformer import Transformer

TOP_K = 2 * MAX_BEAM_SIZE
ENCODER_INPUTS = ["source_ids"]
ENCODER_OUTPUTS = ["cross_keys", "cross_values"]
DECODER_INPUTS = ["tokens", "cross_keys", "cross_values", "source_mask", "past_keys", "past_values", "eos_allowed"]
DECODER_OUTPUTS = ["logits", "present_keys", "present_values", "top_log_probs", "top_ids"]


class EncoderGraph(nn.Module):
    """Source ids -> the cross-attention keys and values of every decoder layer."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.cross_kv(self.model.encode(source_ids))


class DecoderStepGraph(nn.Module):
    """One decoding step: the previous token and the cache -> next-token logits, the best next
    tokens under the decoding rules, and the grown cache."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        c = model.config
        if c.vocab_size < TOP_K:
            raise ValueError(f"the decoder step returns the best {TOP_K} tokens; the vocabulary has {c.vocab_size}")
        never = torch.zeros(c.vocab_size)
        never[[c.pad_id, c.bos_id]] = float("-inf")
        eos = torch.zeros(c.vocab_size)
        eos[c.eos_id] = float("-inf")
        self.register_buffer("never", never, persistent=False)  # added to every step's log-probs
        self.register_buffer("eos_penalty", eos, persistent=False)  # added while EOS is not allowed

    def forward(
        self,
        tokens: torch.Tensor,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
        source_mask: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        eos_allowed: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        logits, keys, values = self.model.decode(tokens, cross_keys, cross_values, source_mask, past_keys, past_values)
        logits = logits[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1) + self.never
        log_probs = log_probs + torch.where(eos_allowed, torch.zeros_like(self.eos_penalty), self.eos_penalty)
        top_log_probs, top_ids = log_probs.topk(TOP_K, dim=-1)
        return logits, keys, values, top_log_probs, top_ids
