"""The encoder-decoder Transformer, written from its primitives.

Shapes: B batch, S source length, T target length (new tokens this call), P cached
target length, D d_model, H heads, Dh = D / H, L decoder layers, V vocabulary.

Decoding is incremental: `encode` runs once per source and `cross_kv` gives the
cross-attention keys/values of every decoder layer; `decode` takes the self-attention cache
of earlier steps and returns it extended by T positions. Training calls the same `decode`
with an empty cache, so one code path serves both. `decode_step` is the serving decode loop's
variant: one token per row, rows at different lengths, the cache only read (the caller writes
each step's keys and values into it in place); a test holds it equal to `decode`.

A cache is a list of plain tensors, one (B, H, P, Dh) tensor per decoder layer (`Cache`).
One tensor per layer rather than one stacked (L, B, H, P, Dh) tensor: in an exported graph,
taking a layer out of a stacked tensor and stacking the layers again each copy the whole
cache at every step (measured: 20% of a decoder step, docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import CrossAttention, QueryGrid, SelfAttention
from model.config import ModelConfig

Cache = list[torch.Tensor]  # one (B, H, P, Dh) tensor per decoder layer


def sinusoidal_table(max_positions: int, d_model: int) -> torch.Tensor:
    """(max_positions, D) table of sin/cos at geometrically spaced frequencies (Vaswani et al.)."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class TokenEmbedding(nn.Module):
    """Token embedding scaled by sqrt(D), plus sinusoidal positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.scale = math.sqrt(config.d_model)
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        # Not a parameter and not saved: it is a pure function of the config.
        self.register_buffer("positions", sinusoidal_table(config.max_positions, config.d_model), persistent=False)

    def forward(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """ids: (B, T) -> (B, T, D), positions start, start+1, ...; `start` is one int for every
        row, or a (B, 1) tensor giving each row its own."""
        pos = torch.arange(ids.shape[1], device=ids.device) + start
        return self.tokens(ids) * self.scale + self.positions[pos]


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear, ReLU, (activation) dropout, Linear."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.ffn)
        self.down = nn.Linear(config.ffn, config.d_model)
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.relu(self.up(x))))


class Residual(nn.Module):
    """A sublayer wrapped in a residual connection and LayerNorm, pre- or post-norm.

    LayerNorm, not BatchNorm: it normalises each position over its own features, so it does not
    depend on the batch or on padding, and behaves the same in training and one-token decoding.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """The sublayer's input."""
        return self.norm(x) if self.norm_first else x

    def post(self, x: torch.Tensor, sublayer_out: torch.Tensor) -> torch.Tensor:
        """The layer's output, given its input and the sublayer's output."""
        y = x + self.dropout(sublayer_out)
        return y if self.norm_first else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config.d_model, config.heads, config.attention_dropout)
        self.attention_residual = Residual(config)
        self.ffn = FeedForward(config)
        self.ffn_residual = Residual(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, S, D); mask: (B, 1, 1, S) -> (B, S, D)."""
        y, _, _ = self.attention(self.attention_residual.pre(x), mask)
        x = self.attention_residual.post(x, y)
        return self.ffn_residual.post(x, self.ffn(self.ffn_residual.pre(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attention = SelfAttention(config.d_model, config.heads, config.attention_dropout)
        self.self_residual = Residual(config)
        self.cross_attention = CrossAttention(config.d_model, config.heads, config.attention_dropout)
        self.cross_residual = Residual(config)
        self.ffn = FeedForward(config)
        self.ffn_residual = Residual(config)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        past_k: torch.Tensor | None,
        past_v: torch.Tensor | None,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        cross_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> (B, T, D) and this layer's self-attention cache (B, H, P+T, Dh)."""
        y, k, v = self.self_attention(self.self_residual.pre(x), self_mask, past_k, past_v)
        return self._after_self_attention(x, y, cross_k, cross_v, cross_mask), k, v

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cached: torch.Tensor,
             cross_k: torch.Tensor, cross_v: torch.Tensor, cross_mask: torch.Tensor,
             grid: QueryGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` for one new position per row over a fixed cache (SelfAttention.step), the
        cross-attention one entry per source (CrossAttention with a grid):
        x (B, D) -> (B, D) and this position's key and value (B, H, 1, Dh)."""
        y, k, v = self.self_attention.step(self.self_residual.pre(x), cache_k, cache_v, cached)
        return self._after_self_attention(x, y, cross_k, cross_v, cross_mask, grid), k, v

    def _after_self_attention(self, x: torch.Tensor, y: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor,
                              cross_mask: torch.Tensor, grid: QueryGrid | None = None) -> torch.Tensor:
        """The layer's output from its input x and its self-attention's output y: the residual,
        then cross-attention and the feed-forward, each in its own residual."""
        x = self.self_residual.post(x, y)
        x = self.cross_residual.post(x, self.cross_attention(self.cross_residual.pre(x), cross_k, cross_v, cross_mask,
                                                             grid))
        return self.ffn_residual.post(x, self.ffn(self.ffn_residual.pre(x)))


class Transformer(nn.Module):
    """Encoder-decoder Transformer for translation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.source_embedding = TokenEmbedding(config)
        # Tied embeddings share one matrix for source, target and output (joint vocabulary).
        self.target_embedding = self.source_embedding if config.tie_embeddings else TokenEmbedding(config)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()
        self.output = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embedding" not in name:
                nn.init.xavier_uniform_(p)
            elif "bias" in name:
                nn.init.zeros_(p)
        for embedding in {self.source_embedding, self.target_embedding}:
            # Scaled by sqrt(D) at lookup, so entries of N(0, 1/D) give unit-variance inputs,
            # and as the tied output matrix they give logits of unit scale.
            nn.init.normal_(embedding.tokens.weight, std=self.config.d_model**-0.5)
            with torch.no_grad():
                embedding.tokens.weight[self.config.pad_id].zero_()

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S) bool, True at real tokens."""
        return src != self.config.pad_id

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """src: (B, S) ids, right-padded -> memory (B, S, D)."""
        mask = self.source_mask(src)[:, None, None, :]  # (B, 1, 1, S)
        x = self.embedding_dropout(self.source_embedding(src))
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def cross_kv(self, memory: torch.Tensor) -> tuple[Cache, Cache]:
        """memory: (B, S, D) -> cross-attention keys and values of every decoder layer, (B, H, S, Dh) each."""
        ks, vs = zip(*(layer.cross_attention.project_memory(memory) for layer in self.decoder_layers))
        return list(ks), list(vs)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> tuple[Cache, Cache]:
        """A self-attention cache holding no positions: L tensors of (B, H, 0, Dh), twice."""
        c = self.config
        dtype = self.source_embedding.tokens.weight.dtype

        def empty() -> Cache:
            return [torch.zeros((batch, c.heads, 0, c.head_dim), device=device, dtype=dtype)
                    for _ in range(c.decoder_layers)]
        return empty(), empty()

    def decode_hidden(
        self,
        tgt: torch.Tensor,
        cross_k: Cache,
        cross_v: Cache,
        src_mask: torch.Tensor,
        past_k: Cache,
        past_v: Cache,
    ) -> tuple[torch.Tensor, Cache, Cache]:
        """Run the decoder over T new target tokens that follow P cached ones.

        tgt: (B, T) ids; cross_k/v: per layer (B, H, S, Dh); src_mask: (B, S) bool;
        past_k/v: per layer (B, H, P, Dh). Returns hidden states (B, T, D) and the cache,
        per layer (B, H, P+T, Dh).
        """
        past = past_k[0].shape[2]
        t = tgt.shape[1]
        # Query i sits at position past+i and may see keys 0..past+i: causal over the whole prefix.
        key_pos = torch.arange(past + t, device=tgt.device)
        query_pos = torch.arange(t, device=tgt.device) + past
        self_mask = key_pos[None, :] <= query_pos[:, None]  # (T, P+T)
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.embedding_dropout(self.target_embedding(tgt, start=past))
        ks, vs = [], []
        for i, layer in enumerate(self.decoder_layers):
            x, k, v = layer(x, self_mask, past_k[i], past_v[i], cross_k[i], cross_v[i], cross_mask)
            ks.append(k)
            vs.append(v)
        return self.decoder_norm(x), ks, vs

    def decode_step(
        self,
        tokens: torch.Tensor,
        cross_k: Cache,
        cross_v: Cache,
        src_mask: torch.Tensor,
        cache_k: Cache,
        cache_v: Cache,
        positions: torch.Tensor,
        query_grid: torch.Tensor,
        query_slots: torch.Tensor,
    ) -> tuple[torch.Tensor, Cache, Cache]:
        """One new token per row, rows at different lengths: what a decode loop that adds
        sentences to a running batch runs at every step.

        tokens: (B, 1); positions: (B,) int64, each row's number of cached tokens; cache_k/v:
        per layer (B, H, C, Dh) with C >= max(positions), row b's tokens in its first
        positions[b] columns (the others are ignored). cross_k/v: per layer (G, H, S, Dh), one
        entry per source, and src_mask (G, S): a sentence's beams share their source's entry,
        read once for all of them. query_grid (G, W): the row in each of a source's W query
        slots (any row where a slot is unused); query_slots (B, 2): each row's source and slot
        (server/runtime/graph_io.py). Returns hidden states (B, D) and this step's keys and values, per layer
        (B, H, 1, Dh), for the caller to write at column positions[b]: the cache itself is
        only read, so a caller keeps it in place.
        """
        cached = (torch.arange(cache_k[0].shape[2], device=tokens.device)[None, :]
                  < positions[:, None])[:, None, None, :]  # (B, 1, 1, C)
        cross_mask = src_mask[:, None, None, :]  # (G, 1, 1, S)
        grid = QueryGrid.of(query_grid, query_slots, self.config.heads)
        # One position per row: (B, D) through the layers, so that the exported linear layers are
        # 2-D matmuls that ONNX Runtime fuses with their bias (and ReLU) into one Gemm node each.
        x = self.target_embedding(tokens, start=positions[:, None])[:, 0]
        ks, vs = [], []
        for i, layer in enumerate(self.decoder_layers):
            x, k, v = layer.step(x, cache_k[i], cache_v[i], cached, cross_k[i], cross_v[i], cross_mask, grid)
            ks.append(k)
            vs.append(v)
        return self.decoder_norm(x), ks, vs

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)."""
        if self.output is None:
            return hidden @ self.target_embedding.tokens.weight.t()
        return self.output(hidden)

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, D): the output projection's rows, one per target token (the target embedding when tied)."""
        return self.target_embedding.tokens.weight if self.output is None else self.output.weight

    def decode(
        self,
        tgt: torch.Tensor,
        cross_k: Cache,
        cross_v: Cache,
        src_mask: torch.Tensor,
        past_k: Cache,
        past_v: Cache,
    ) -> tuple[torch.Tensor, Cache, Cache]:
        """Like `decode_hidden`, returning logits (B, T, V) instead of hidden states."""
        hidden, k, v = self.decode_hidden(tgt, cross_k, cross_v, src_mask, past_k, past_v)
        return self.logits(hidden), k, v

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. src: (B, S); tgt: (B, T) starting with BOS -> (B, T, V)."""
        return self.logits(self.forward_hidden(src, tgt))

    def forward_hidden(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder hidden states (B, T, D); training projects only the real positions."""
        memory = self.encode(src)
        cross_k, cross_v = self.cross_kv(memory)
        past_k, past_v = self.empty_cache(src.shape[0], src.device)
        hidden, _, _ = self.decode_hidden(tgt, cross_k, cross_v, self.source_mask(src), past_k, past_v)
        return hidden

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def with_vocabulary(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """`state` with its embedding and output matrices grown to `vocab_size` rows (tokens appended
    to a trained tokenizer, such as the sentinels): old rows unchanged, each new row the mean of
    the old ones plus a little noise, so that new tokens start as an average word, not as noise."""
    grown = dict(state)
    generator = torch.Generator().manual_seed(vocab_size)
    for name, matrix in state.items():
        if (name.endswith("tokens.weight") or name == "output.weight") and matrix.shape[0] < vocab_size:
            extra = vocab_size - matrix.shape[0]
            noise = torch.randn(extra, matrix.shape[1], generator=generator, dtype=matrix.dtype) * matrix.std() * 0.1
            grown[name] = torch.cat([matrix, matrix.mean(dim=0, keepdim=True) + noise])
    return grown
