"""The Transformer's contract: shapes, masks, the cache, and attention arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from model.attention import SelfAttention, attend, merge_heads, split_heads
from model.config import PAD_ID, ModelConfig

from tests.builders import make_model, random_batch


def test_config_round_trips_and_rejects_bad_sizes():
    config = ModelConfig(d_model=64, heads=8, norm_first=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "blue"})


@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes_of_every_stage(norm_first):
    model = make_model(norm_first=norm_first)
    src = random_batch([7, 5, 3])
    tgt = random_batch([6, 6, 2], seed=2)
    c = model.config
    memory = model.encode(src)
    assert memory.shape == (3, 7, c.d_model)
    cross_k, cross_v = model.cross_kv(memory)
    assert len(cross_k) == len(cross_v) == c.decoder_layers
    assert {t.shape for t in cross_k + cross_v} == {(3, c.heads, 7, c.head_dim)}
    past_k, past_v = model.empty_cache(3)
    logits, k, v = model.decode(tgt, cross_k, cross_v, model.source_mask(src), past_k, past_v)
    assert logits.shape == (3, 6, c.vocab_size)
    assert len(k) == len(v) == c.decoder_layers
    assert {t.shape for t in k + v} == {(3, c.heads, 6, c.head_dim)}
    assert model(src, tgt).shape == (3, 6, c.vocab_size)


def test_tied_embeddings_share_one_matrix():
    tied = make_model()
    assert tied.source_embedding.tokens.weight is tied.target_embedding.tokens.weight
    assert tied.output is None
    untied = make_model(tie_embeddings=False)
    assert untied.source_embedding.tokens.weight is not untied.target_embedding.tokens.weight
    assert untied.num_parameters() > tied.num_parameters()


@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_does_not_change_other_positions(norm_first):
    model = make_model(norm_first=norm_first)
    src = random_batch([6])
    tgt = random_batch([5], seed=3)
    alone = model(src, tgt)
    padded_src = torch.cat([src, torch.full((1, 9), PAD_ID)], dim=1)
    assert torch.allclose(model(padded_src, tgt), alone, atol=1e-6)
    # The same sentence beside a longer one in a batch gives the same logits.
    other = random_batch([15], seed=4)
    batch_src = torch.cat([padded_src, other], dim=0)
    batch_tgt = torch.cat([tgt, random_batch([5], seed=5)], dim=0)
    assert torch.allclose(model(batch_src, batch_tgt)[0], alone[0], atol=1e-5)


def test_causal_mask_leaks_no_future_token():
    model = make_model()
    src = random_batch([6])
    tgt = random_batch([8], seed=6)
    changed = tgt.clone()
    changed[0, 5:] = torch.tensor([10, 11, 12])
    before, after = model(src, tgt), model(src, changed)
    assert torch.allclose(before[0, :5], after[0, :5], atol=1e-6)
    assert not torch.allclose(before[0, 5:], after[0, 5:], atol=1e-3)


@pytest.mark.parametrize("norm_first", [True, False])
def test_incremental_decoding_equals_full_recomputation(norm_first):
    model = make_model(norm_first=norm_first)
    src = random_batch([9, 4, 7])
    tgt = random_batch([8, 8, 8], seed=7)
    full = model(src, tgt)
    cross_k, cross_v = model.cross_kv(model.encode(src))
    past_k, past_v = model.empty_cache(3)
    steps = []
    for t in range(tgt.shape[1]):
        logits, past_k, past_v = model.decode(tgt[:, t: t + 1], cross_k, cross_v, model.source_mask(src),
                                              past_k, past_v)
        steps.append(logits)
    assert past_k[0].shape[2] == tgt.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5
    # Several tokens at once on top of a cache also agree (chunked prefill).
    past_k, past_v = model.empty_cache(3)
    first, past_k, past_v = model.decode(tgt[:, :3], cross_k, cross_v, model.source_mask(src), past_k, past_v)
    rest, _, _ = model.decode(tgt[:, 3:], cross_k, cross_v, model.source_mask(src), past_k, past_v)
    assert (torch.cat([first, rest], dim=1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_step_over_rows_at_different_lengths_equals_each_rows_own_decode(norm_first):
    """decode_step (what the exported step computes): row b reads the first positions[b] columns
    of a cache with spare columns full of noise, and returns the logits and the new position's
    keys and values that `decode` gives the row alone over exactly its own tokens."""
    model = make_model(norm_first=norm_first)
    c = model.config
    src = random_batch([9, 4, 7, 5])
    tgt = random_batch([8, 8, 8, 8], seed=8)
    cross_k, cross_v = model.cross_kv(model.encode(src))
    mask = model.source_mask(src)
    positions = torch.tensor([5, 0, 2, 5])
    _, full_k, full_v = model.decode(tgt[:, :5], cross_k, cross_v, mask, *model.empty_cache(4))
    generator = torch.Generator().manual_seed(0)
    cached = (torch.arange(7)[None, :] < positions[:, None])[:, None, :, None]  # capacity 7 > 5
    cache_k, cache_v = ([torch.where(cached, torch.nn.functional.pad(t, (0, 0, 0, 2)),
                                     torch.randn(4, c.heads, 7, c.head_dim, generator=generator) * 100)
                         for t in cache] for cache in (full_k, full_v))
    tokens = tgt[torch.arange(4), positions][:, None]
    own = torch.arange(4)
    hidden, new_k, new_v = model.decode_step(tokens, cross_k, cross_v, mask, cache_k, cache_v, positions,
                                             torch.stack([own, own], 1), torch.stack([own, 0 * own], 1))
    assert {t.shape for t in new_k + new_v} == {(4, c.heads, 1, c.head_dim)}
    for row, n in enumerate(positions.tolist()):
        r = slice(row, row + 1)
        logits, k, v = model.decode(tokens[r], [t[r] for t in cross_k], [t[r] for t in cross_v], mask[r],
                                    [t[r, :, :n] for t in full_k], [t[r, :, :n] for t in full_v])
        assert (model.logits(hidden[r]) - logits).abs().max().item() <= 1e-5
        assert max((a[r] - b[:, :, n:]).abs().max().item() for a, b in zip(new_k + new_v, k + v)) <= 1e-5


def test_beams_sharing_their_sources_cross_attention_entry_get_what_each_gets_with_its_own_copy():
    """decode_step with one cross-attention entry per source, read by all of its rows through the
    query grid: rows 0-2 are three beams of source 0, row 3 the one beam of source 1."""
    model = make_model()
    src = random_batch([9, 5])
    cross_k, cross_v = model.cross_kv(model.encode(src))
    mask = model.source_mask(src)
    tokens = random_batch([1, 1, 1, 1], seed=3)[:, :1]
    positions = torch.zeros(4, dtype=torch.long)
    cache = model.empty_cache(4)
    rows = torch.tensor([0, 0, 0, 1])  # each row's source
    copies = [t[rows] for t in cross_k], [t[rows] for t in cross_v]
    own = torch.arange(4)
    each, _, _ = model.decode_step(tokens, *copies, mask[rows], *cache, positions, torch.stack([own, own], 1),
                                   torch.stack([own, 0 * own], 1))
    grid = torch.tensor([[0, 1, 2, 0], [3, 0, 0, 0]])  # source 1 uses one of its four slots
    slots = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0]])
    shared, _, _ = model.decode_step(tokens, cross_k, cross_v, mask, *cache, positions, grid, slots)
    assert (shared - each).abs().max().item() <= 1e-5


def written_out_attention(q, k, v, mask):
    """softmax(QK^T / sqrt(d)) V with a boolean mask, spelled out."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_fused_attention_equals_written_out_formula():
    torch.manual_seed(0)
    attention = SelfAttention(d_model=32, heads=4, dropout=0.0).eval()
    x = torch.randn(2, 5, 32)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    fused, k, v = attention(x, mask)
    q = split_heads(attention.qkv(x).chunk(3, dim=-1)[0], 4)
    expected = attention.out(merge_heads(written_out_attention(q, k, v, mask)))
    assert (fused - expected).abs().max().item() <= 1e-6


def test_dropout_only_in_training():
    model = make_model(dropout=0.3)
    src, tgt = random_batch([6]), random_batch([5], seed=8)
    assert torch.equal(model(src, tgt), model(src, tgt))
    model.train()
    assert not torch.equal(model(src, tgt), model(src, tgt))


def test_export_form_of_attention_equals_the_fused_kernel(monkeypatch):
    """The written-out formula that ONNX export traces computes what the fused kernel computes."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    mask = torch.rand(2, 1, 3, 7) > 0.3
    mask[..., 0] = True  # every query sees at least one key, as in the model
    fused = attend(q, k, v, mask, 0.0)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert (attend(q, k, v, mask, 0.0) - fused).abs().max().item() <= 1e-6
