"""The PyTorch reference decoder: it reproduces what a model memorised, and its options hold."""

from __future__ import annotations

import pytest
import torch

from model.batching import pad
from model.checkpoint import load_checkpoint
from model.decoding import translate_ids
from model.search import DecodeOptions, SentenceGreedy, mode_label
from model.translate import translate_hypotheses, translate_texts
from tests.builders import make_model, random_batch, tiny_pairs


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("beam", [1, 4])
def test_memorised_pairs_are_reproduced_exactly(tiny, beam):
    pairs = tiny_pairs()
    out = translate_texts(tiny.model, tiny.tokenizer, [s for s, _ in pairs], options=DecodeOptions(beam_size=beam))
    assert out == [t for _, t in pairs]


def test_batch_composition_never_changes_a_translation():
    model = make_model()
    sources = random_batch([12, 3, 9, 5, 7, 12, 2, 4], seed=11)
    for options in (DecodeOptions(max_length=10), DecodeOptions(beam_size=3, n_best=3, max_length=10)):
        batched = translate_ids(model, sources, options)
        for row in range(sources.shape[0]):
            length = int((sources[row] != 0).sum())
            alone = translate_ids(model, sources[row: row + 1, :length], options)[0]
            assert [h.tokens for h in alone] == [h.tokens for h in batched[row]]
            assert [h.score for h in alone] == pytest.approx([h.score for h in batched[row]], abs=1e-4)


def test_n_best_is_ordered_by_score_and_distinct():
    model = make_model()
    hyps = translate_ids(model, random_batch([6, 9]), DecodeOptions(beam_size=5, n_best=5, max_length=8))
    for sentence in hyps:
        assert len(sentence) == 5
        scores = [h.score for h in sentence]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in sentence}) == 5


def test_beam_search_finds_at_least_the_greedy_score():
    model = make_model()
    src = random_batch([8, 5, 11], seed=12)
    greedy = translate_ids(model, src, DecodeOptions(length_penalty=0.0, max_length=6))
    beam = translate_ids(model, src, DecodeOptions(beam_size=6, length_penalty=0.0, max_length=6))
    for g, b in zip(greedy, beam):
        assert b[0].score >= g[0].score - 1e-5


@pytest.mark.parametrize("beam", [1, 3])
def test_min_and_max_length_are_respected(tiny, beam):
    src = pad(tiny.tokenizer.encode_sources(["The red cat.", "The old doors."], tiny.config.max_positions))
    for hyps in translate_ids(tiny.model, src, DecodeOptions(beam_size=beam, max_length=2)):
        assert all(len(h.tokens) <= 2 for h in hyps)
    natural = translate_ids(tiny.model, src, DecodeOptions(beam_size=beam))
    longest = max(len(h[0].tokens) for h in natural)
    for hyps in translate_ids(tiny.model, src, DecodeOptions(beam_size=beam, min_length=longest + 3)):
        assert all(len(h.tokens) >= longest + 3 for h in hyps)


def test_output_budget_follows_each_sentence_and_the_model_maximum():
    options = DecodeOptions()
    assert options.target_limit(5, max_positions=256) == 20
    assert options.target_limit(200, max_positions=256) == 255
    assert DecodeOptions(max_length=7).target_limit(100, max_positions=256) == 7


def test_a_greedy_length_counts_the_eos_it_ended_with_but_not_one_cut_off_by_the_budget():
    assert SentenceGreedy([7, 8, 9], -6.0).hypothesis(limit=10, length_penalty=1.0).score == pytest.approx(-1.5)
    assert SentenceGreedy([7, 8, 9], -6.0).hypothesis(limit=3, length_penalty=1.0).score == pytest.approx(-2.0)
    assert SentenceGreedy([], -1.0).hypothesis(limit=5, length_penalty=1.0).score == pytest.approx(-1.0)


def test_a_greedy_sentence_ends_at_eos_or_at_its_budget():
    sentence = SentenceGreedy()
    assert sentence.advance(7, -0.5, step=1, limit=3, eos_id=3)
    assert not sentence.advance(8, -0.5, step=3, limit=3, eos_id=3)  # the budget: 3 tokens
    assert sentence.tokens == [7, 8]
    ended = SentenceGreedy()
    assert not ended.advance(3, -0.25, step=1, limit=9, eos_id=3)  # EOS is scored, not kept
    assert (ended.tokens, ended.log_prob) == ([], -0.25)


def test_reports_name_a_search_greedy_or_by_its_beam():
    assert [mode_label(beam) for beam in (1, 4, 16)] == ["greedy", "beam 4", "beam 16"]


def test_special_tokens_are_never_generated():
    model = make_model()
    for hyps in translate_ids(model, random_batch([5, 9, 3], seed=13), DecodeOptions(beam_size=2, n_best=2, max_length=12)):
        for h in hyps:
            assert not {0, 2, 3} & set(h.tokens)


def test_empty_batch_gives_empty_result():
    model = make_model()
    assert translate_ids(model, torch.zeros((0, 4), dtype=torch.long), DecodeOptions()) == []


def test_over_long_input_is_rejected_not_truncated(tiny):
    too_long = " ".join(["house"] * 200)
    with pytest.raises(ValueError, match="at most 64"):
        translate_hypotheses(tiny.model, tiny.tokenizer, ["The cat.", too_long])


@pytest.mark.parametrize("bad", [dict(beam_size=0), dict(beam_size=2, n_best=3), dict(min_length=-1),
                                 dict(max_length=0), dict(min_length=6, max_length=5), dict(length_penalty=-1)])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        DecodeOptions(**bad)
