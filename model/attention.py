"""Multi-head scaled dot-product attention: self-attention with a key/value cache, and cross-attention.

PyTorch runs `F.scaled_dot_product_attention`, the fused kernel; a test shows it equals the
written-out softmax(QK^T / sqrt(d)) V. Masks are boolean and broadcastable to
(batch, heads, queries, keys); True means "may attend".

Queries are scaled by 1 / sqrt(Dh) as they leave their projection, before their heads are split.
In an exported graph the scale then sits a Reshape away from the score MatMul, and ONNX Runtime
cannot fold it into that MatMul as its alpha: its kernel with alpha != 1 took 0.8 ms more of a
10 ms decoder step at 64 rows (docs/benchmarks.md). With Dh a power of 4 the scale is a power of
2, so scaling before or after the product gives the same bits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class QueryGrid(NamedTuple):
    """Where a step's rows sit among the sources' query groups (CrossAttention with a grid).

    queries: (G * H * W,) for each source, head and query slot, the (row * H + head) to take;
    rows: (B * H,) for each row and head, its (source * H + head) * W + slot in the grid."""

    queries: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def of(cls, query_grid: torch.Tensor, query_slots: torch.Tensor, heads: int) -> QueryGrid:
        """query_grid: (G, W) the row in each source's W slots (any row where a slot is empty);
        query_slots: (B, 2) each row's source and slot."""
        group = query_grid.shape[1]
        h = torch.arange(heads, device=query_grid.device)
        queries = (query_grid[:, None, :] * heads + h[None, :, None]).reshape(-1)
        rows = (query_slots[:, :1] * heads + h[None, :]) * group + query_slots[:, 1:]
        return cls(queries, rows.reshape(-1))


def scaled_queries(q: torch.Tensor, heads: int) -> torch.Tensor:
    """Queries (..., D) times 1 / sqrt(D / heads), the attention's scale (module docstring)."""
    return q * (1.0 / math.sqrt(q.shape[-1] // heads))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D/H); a decoding step's (B, D), one position per row, -> (B, H, 1, D/H).

    With one position a row's heads are already contiguous, so a step needs no transpose: one
    node fewer per projection in the exported step, whose cost at batch 1 is mostly per node.
    """
    if x.dim() == 2:
        return x.view(x.shape[0], heads, 1, x.shape[1] // heads)
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor, *, step: bool = False) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H*Dh); with `step` (T = 1), -> (B, H*Dh) without a transpose."""
    b, h, t, dh = x.shape
    if step:
        return x.reshape(b, h * dh)
    return x.transpose(1, 2).reshape(b, t, h * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """softmax(Q K^T) V over (B, H, T, Dh) queries, already scaled (`scaled_queries`), and
    (B, H, P, Dh) keys and values.

    When exporting to ONNX the formula is written out: the exporter decomposes the fused kernel
    into nodes that transpose and scale the whole key cache at every decoding step, while
    Q @ K^T lets ONNX Runtime fold the transpose into its MatMul (measured: 10% faster
    decoding, docs/benchmarks.md).
    """
    if not torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class SelfAttention(nn.Module):
    """Attention of a sequence over itself (and over its cached past, when decoding step by step)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul instead of three
        self.out = nn.Linear(d_model, d_model)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D); past_k/v: (B, H, P, Dh) or None.

        Returns the output (B, T, D) and this layer's keys and values (B, H, P+T, Dh),
        which are the cache for the next step.
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (scaled_queries(q, self.heads), k, v))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(merge_heads(y)), k, v

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
             cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new position per row over a cache that is read, never copied.

        x: (B, D); cache_k/v: (B, H, C, Dh); cached: (B, 1, 1, C) bool, True at the columns
        that hold this row's earlier positions (the others are ignored, whatever they hold).
        Returns the output (B, D) and this position's key and value (B, H, 1, Dh), which
        the caller writes into its cache. softmax over [cache ; new] is taken as one softmax
        over the two score blocks side by side, so the cache is never concatenated: a copy of
        the whole cache per layer and step (measured: 18% of a decoder step, docs/benchmarks.md).
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (scaled_queries(q, self.heads), k, v))
        scores = torch.cat([(q @ cache_k.transpose(-2, -1)).masked_fill(~cached, float("-inf")),
                            (q * k).sum(dim=-1, keepdim=True)], dim=-1)  # (B, H, 1, C + 1)
        p = torch.softmax(scores, dim=-1)
        y = p[..., :-1] @ cache_v + p[..., -1:] * v
        return self.out(merge_heads(y, step=True)), k, v


class CrossAttention(nn.Module):
    """Attention of the decoder over the encoder's output.

    The keys and values depend only on the source, so `project_memory` computes them once
    per source sentence and every decoding step reuses them.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory: (B, S, D) -> keys, values: (B, H, S, Dh)."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                grid: QueryGrid | None = None) -> torch.Tensor:
        """x: (B, T, D), or a step's (B, D); k, v: (B, H, S, Dh); mask: (B, 1, 1, S) -> x's shape.

        With a `grid` (a step's (B, D) rows only), k, v and mask hold one entry per source, (G, ...),
        and the rows' queries are gathered into (G, H, W, Dh): each source's keys and values
        are read once for all its beams, not once per beam."""
        if grid is not None:
            b, d = x.shape
            q = scaled_queries(self.q(x), self.heads).reshape(b * self.heads, d // self.heads)
            q = q.index_select(0, grid.queries)
            y = attend(q.reshape(k.shape[0], self.heads, -1, d // self.heads), k, v, mask, 0.0)
            return self.out(y.reshape(-1, d // self.heads).index_select(0, grid.rows).reshape(b, d))
        q = split_heads(scaled_queries(self.q(x), self.heads), self.heads)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(merge_heads(y, step=x.dim() == 2))
