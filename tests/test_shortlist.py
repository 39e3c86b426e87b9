"""The vocabulary shortlist: built from a parallel corpus, each sentence's list holds its
source words' likeliest translations, the frequent tokens and its own tokens, and a step over
several sentences restricts each row to its own sentence's list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.cli import ShortlistSettings, export_version
from export.shortlist import build_shortlist
from model.batching import pad
from model.checkpoint import load_checkpoint

from model.decoding import allowed_tokens
from model.decoding import translate_ids as reference_translate_ids
from model.search import DecodeOptions
from server.runtime import Scheduler, SessionConfig, Translator, load_manifest
from server.runtime import translate_ids as onnx_translate_ids
from server.runtime.engine import Engine, StaticEngine
from server.runtime.shortlist import LEAST_ALWAYS, Shortlist, restriction
from tests.builders import make_model, random_batch, tiny_pairs
from tests.test_engine import translates_each_as_alone_under_random_admission

VOCAB = 256
SPECIALS = list(range(100, 100 + LEAST_ALWAYS))  # listed for every sentence: a step ranks this many


def test_a_word_is_listed_with_its_translation_not_with_what_only_shares_its_sentences():
    """Target 9 (a full stop) is in every sentence, as is source 5: co-occurrence ties 9 with
    20 for source 10 (two sentences each), but 5 explains 9, so source 10's best is 20."""
    pairs = [([10, 5], [20, 9]), ([11, 5], [21, 9]), ([12, 5], [22, 9]), ([10, 5], [20, 9])]
    shortlist = build_shortlist(pairs, VOCAB, per_source=1, frequent=0, always=SPECIALS)
    assert [shortlist.targets[shortlist.offsets[s]: shortlist.offsets[s + 1]].tolist() for s in (5, 10, 11, 12)] \
        == [[9], [20], [21], [22]]
    assert shortlist.offsets[1] == 0 and shortlist.offsets[-1] == len(shortlist.targets)  # unseen ids: none


def test_each_sentence_may_produce_the_frequent_and_given_ids_its_own_tokens_and_their_translations():
    pairs = [([10, 5], [20, 9]), ([11, 5], [21, 9]), ([11, 6], [21, 8]), ([12, 6], [22, 8])]
    shortlist = build_shortlist(pairs, VOCAB, per_source=1, frequent=1, always=SPECIALS)
    assert shortlist.always.tolist() in ([8] + SPECIALS, [9] + SPECIALS)  # 8 and 9 are as frequent
    listed = shortlist.for_source([10, 11, 3])
    assert listed.tolist() == sorted(set(shortlist.always.tolist()) | {10, 11, 3, 20, 21})


def test_it_is_saved_and_loaded_as_it_was(tmp_path):
    shortlist = build_shortlist([([4, 5], [6, 7]), ([4, 8], [6, 9])], VOCAB, per_source=2, frequent=1, always=SPECIALS)
    shortlist.save(tmp_path / "shortlist.npz")
    loaded = Shortlist.load(tmp_path / "shortlist.npz")
    for name in ("always", "offsets", "targets"):
        assert np.array_equal(getattr(loaded, name), getattr(shortlist, name))


def test_offsets_that_do_not_cover_the_targets_and_lists_shorter_than_a_step_ranks_are_refused():
    with pytest.raises(ValueError, match="offsets"):
        Shortlist(always=np.array(SPECIALS), offsets=np.array([0, 2, 1]), targets=np.array([5]))
    with pytest.raises(ValueError, match="ranks the best"):
        Shortlist(always=np.array(SPECIALS[1:]), offsets=np.array([0, 1]), targets=np.array([5]))


def test_a_step_allows_each_row_its_own_sentences_list_of_the_union():
    vocabulary, allowed = restriction([np.array([3, 5, 7]), np.array([3, 4])], [[0, 1], [3]], batch=4, vocab_size=9)
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
    restricted = reference_translate_ids(model, sources, options, allowed)
    for row, hypotheses in enumerate(restricted):
        assert all(allowed[row, t] for h in hypotheses for t in h.tokens if t != c.eos_id)
        length = int((sources[row] != c.pad_id).sum())
        alone = reference_translate_ids(model, sources[row: row + 1, :length], options, allowed[row: row + 1])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hypotheses]
    unrestricted = reference_translate_ids(model, sources, options)
    everything = reference_translate_ids(model, sources, options, torch.ones(3, c.vocab_size, dtype=torch.bool))
    assert [[h.tokens for h in s] for s in everything] == [[h.tokens for h in s] for s in unrestricted]
    assert [[h.tokens for h in s] for s in restricted] != [[h.tokens for h in s] for s in unrestricted]


@pytest.fixture(scope="module")
def tiny_shortlisted(tiny_checkpoint, tiny_corpus, tmp_path_factory) -> Path:
    """The tiny model exported with a vocabulary shortlist of its own corpus, through the gate."""
    version_dir, report = export_version(tiny_checkpoint, tmp_path_factory.mktemp("models"), "tiny", tiny_pairs(),
                                         shortlist=ShortlistSettings(tiny_corpus / "train.tsv", per_source=3,
                                                                     frequent=LEAST_ALWAYS))
    assert report.passed, report.failures
    return version_dir


def test_a_version_with_a_shortlist_passes_the_gate_both_ways_and_decodes_over_it(tiny_shortlisted):
    manifest = load_manifest(tiny_shortlisted)
    assert manifest.shortlist and {"decoder_shortlist", "output_rows"} <= set(manifest.graphs)
    assert [run.mode for run in manifest.parity.translations] == ["greedy", "beam 4", "greedy, shortlist",
                                                                  "beam 4, shortlist"]
    assert all(run.identical == run.sentences for run in manifest.parity.translations)
    graphs = Translator(tiny_shortlisted, SessionConfig(device="cpu", streams=1)).graphs
    assert graphs.shortlist is not None and len(graphs.shortlist.always) < graphs.config.vocab_size // 2
    assert Translator(tiny_shortlisted, SessionConfig(device="cpu", shortlist=False)).graphs.shortlist is None


def test_each_sentence_produces_only_its_own_list_and_the_same_as_the_reference(tiny_shortlisted):
    translator = Translator(tiny_shortlisted, SessionConfig(device="cpu", streams=1))
    checkpoint = load_checkpoint(tiny_shortlisted)
    graphs, c = translator.graphs, translator.graphs.config
    ids = translator.encode([s for s, _ in tiny_pairs()])
    for options in (DecodeOptions(), DecodeOptions(beam_size=3, n_best=3)):
        ours = onnx_translate_ids(graphs, ids, options, max_batch=8)
        lists = [graphs.shortlist.for_source(i) for i in ids]
        allowed = allowed_tokens(lists, c.vocab_size)
        reference = [reference_translate_ids(checkpoint.model, pad([i]), options, allowed[row: row + 1])[0]
                     for row, i in enumerate(ids)]
        for hypotheses, expected, own in zip(ours, reference, lists):
            assert [h.tokens for h in hypotheses] == [h.tokens for h in expected]
            assert all(np.isin(h.tokens, own).all() for h in hypotheses)


def test_a_sentence_translates_as_alone_among_others_joining_with_their_own_lists(tiny_shortlisted):
    translator = Translator(tiny_shortlisted, SessionConfig(device="cpu", streams=1))
    engine = Engine(translator.graphs, max_rows=16)
    translates_each_as_alone_under_random_admission(translator, engine)


def test_the_static_engine_refuses_a_shortlist_whose_size_changes_every_step(tiny_shortlisted):
    with pytest.raises(ValueError, match="fixed shapes"):
        Translator(tiny_shortlisted, SessionConfig(device="cpu", streams=1, static_cache=True))
    assert isinstance(Scheduler(Translator(tiny_shortlisted, SessionConfig(device="cpu", shortlist=False,
                                                                           static_cache=True)).graphs,
                                max_rows=4).engines[0], StaticEngine)


def test_the_exporter_refuses_a_shortlist_beyond_fp32(tiny_corpus, tmp_path, capsys):
    from export.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["some/checkpoint", "--repository", str(tmp_path), "--test", str(tiny_corpus / "valid.tsv"),
              "--precision", "int8", "--shortlist-corpus", str(tiny_corpus / "train.tsv")])
    assert refused.value.code == 2 and "fp32 only" in capsys.readouterr().err
