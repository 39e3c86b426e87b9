"""The vocabulary shortlist: built from a parallel corpus, each sentence's list holds its
source words' likeliest translations, the frequent tokens and its own tokens, and a step over
several sentences restricts each row to its own sentence's list."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.shortlist import build_shortlist
from model.decoding import translate_ids
from model.search import DecodeOptions
from server.runtime.shortlist import Shortlist, restriction
from tests.builders import make_model, random_batch


def test_a_word_is_listed_with_its_translation_not_with_what_only_shares_its_sentences():
    """Target 9 (a full stop) is in every sentence, as is source 5: co-occurrence ties 9 with
    20 for source 10 (two sentences each), but 5 explains 9, so source 10's best is 20."""
    pairs = [([10, 5], [20, 9]), ([11, 5], [21, 9]), ([12, 5], [22, 9]), ([10, 5], [20, 9])]
    shortlist = build_shortlist(pairs, 32, per_source=1, frequent=0)
    assert [shortlist.targets[shortlist.offsets[s]: shortlist.offsets[s + 1]].tolist() for s in (5, 10, 11, 12)] \
        == [[9], [20], [21], [22]]
    assert shortlist.offsets[1] == 0 and shortlist.offsets[-1] == len(shortlist.targets)  # unseen ids: none


def test_each_sentence_may_produce_the_frequent_and_given_ids_its_own_tokens_and_their_translations():
    pairs = [([10, 5], [20, 9]), ([11, 5], [21, 9]), ([11, 6], [21, 8]), ([12, 6], [22, 8])]
    shortlist = build_shortlist(pairs, 32, per_source=1, frequent=1, always=[3])
    assert shortlist.always.tolist() == [3, 8] or shortlist.always.tolist() == [3, 9]  # 8 and 9 are as frequent
    listed = shortlist.for_source([10, 11, 3])
    assert listed.tolist() == sorted(set(shortlist.always.tolist()) | {10, 11, 3, 20, 21})


def test_it_is_saved_and_loaded_as_it_was(tmp_path):
    shortlist = build_shortlist([([4, 5], [6, 7]), ([4, 8], [6, 9])], 16, per_source=2, frequent=1, always=[3])
    shortlist.save(tmp_path / "shortlist.npz")
    loaded = Shortlist.load(tmp_path / "shortlist.npz")
    for name in ("always", "offsets", "targets"):
        assert np.array_equal(getattr(loaded, name), getattr(shortlist, name))


def test_offsets_that_do_not_cover_the_targets_are_refused():
    with pytest.raises(ValueError, match="offsets"):
        Shortlist(always=np.array([3]), offsets=np.array([0, 2, 1]), targets=np.array([5]))


def test_a_step_allows_each_row_its_own_sentences_list_of_the_union():
    vocabulary, allowed = restriction([np.array([3, 5, 7]), np.array([3, 4])], [[0, 1], [3]], batch=4)
    assert vocabulary.tolist() == [3, 4, 5, 7]
    assert allowed.tolist() == [[True, False, True, True], [True, False, True, True],
                                [True, True, True, True],  # no sentence's row: unread
                                [True, True, False, False]]


@pytest.mark.parametrize("options", [DecodeOptions(max_length=8), DecodeOptions(beam_size=3, n_best=3, max_length=8)])
def test_the_reference_decoder_produces_only_allowed_tokens_and_each_sentence_as_alone(options):
    model = make_model()
    sources = random_batch([7, 4, 9], seed=5)
    c = model.config
    allowed = torch.zeros(3, c.vocab_size, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    for row in range(3):
        allowed[row, torch.randperm(c.vocab_size, generator=generator)[: c.vocab_size // 3]] = True
        allowed[row, c.eos_id] = True
    restricted = translate_ids(model, sources, options, allowed)
    for row, hypotheses in enumerate(restricted):
        assert all(allowed[row, t] for h in hypotheses for t in h.tokens if t != c.eos_id)
        length = int((sources[row] != c.pad_id).sum())
        alone = translate_ids(model, sources[row: row + 1, :length], options, allowed[row: row + 1])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hypotheses]
    unrestricted = translate_ids(model, sources, options)
    everything = translate_ids(model, sources, options, torch.ones(3, c.vocab_size, dtype=torch.bool))
    assert [[h.tokens for h in s] for s in everything] == [[h.tokens for h in s] for s in unrestricted]
    assert [[h.tokens for h in s] for s in restricted] != [[h.tokens for h in s] for s in unrestricted]
