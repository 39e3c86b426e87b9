"""The engine on caches allocated once (StaticEngine, server/runtime/static_cache.py): what a
CUDA graph needs, checked on the CPU. It translates as the resizing engine does; a sentence
translates the same alone and among others joining and leaving at random steps; rows are
copied and sources placed in place; each step runs on a bucket covering every slot and entry
in use; its caches hold exactly the bound it reports. (On a GPU, bench/cuda_check.sh runs the
captured steps and compares the two engines; see docs/benchmarks.md.)"""

from __future__ import annotations

import time

import numpy as np
import pytest

from model.search import MAX_BEAM_SIZE, DecodeOptions
from server.runtime import SessionConfig, Translator, create_session, translate_ids
from server.runtime.engine import Engine, Scheduler, Sentence, StaticEngine
from server.runtime.graphs import cache_shape
from server.runtime.static_cache import StaticCache
from tests.builders import tiny_pairs
from tests.test_engine import Collected, alone, same, translates_each_as_alone_under_random_admission


@pytest.fixture(scope="module")
def tiny(tiny_version) -> Translator:
    return Translator(tiny_version, SessionConfig(device="cpu", streams=1))


@pytest.fixture(scope="module")
def tiny_static(tiny_version) -> Translator:
    return Translator(tiny_version, SessionConfig(device="cpu", streams=1, static_cache=True))


def test_the_scheduler_runs_static_engines_when_configured(tiny, tiny_static):
    assert all(type(e) is StaticEngine for e in Scheduler(tiny_static.graphs, max_rows=8).engines)
    assert all(type(e) is Engine for e in Scheduler(tiny.graphs, max_rows=8).engines)


@pytest.mark.parametrize("options", [DecodeOptions(), DecodeOptions(beam_size=4, n_best=4),
                                     DecodeOptions(beam_size=2, n_best=2, length_penalty=0.5)])
def test_it_translates_as_the_resizing_engine(tiny, tiny_static, options):
    ids = tiny.encode([s for s, _ in tiny_pairs()])
    resizing = translate_ids(tiny.graphs, ids, options, max_batch=8)
    static = translate_ids(tiny_static.graphs, ids, options, max_batch=8)
    assert all(same(a, b) for a, b in zip(resizing, static))


def test_continuous_admission_with_mixed_options_changes_no_translation(tiny_static):
    """Sentences join a few at a time at random steps, up to 24 rows, beams forking: each
    equals itself decoded alone, and every step ran on a bucket (1, 4, 16 rows, or all 24)."""
    engine = StaticEngine(tiny_static.graphs, max_rows=24)
    translates_each_as_alone_under_random_admission(tiny_static, engine)
    assert set(engine._buckets) <= {1, 4, 16, 24} and len(engine._buckets) > 1


def test_sentences_left_high_move_down_and_their_steps_shrink_to_the_smallest_bucket(tiny_static):
    """16 short sentences take the low slots, a long greedy one and a long beam-2 one the slots
    above: once the short ones finish, the long ones' rows and entries move down and every
    later step runs on 4 rows, not 24; each still translates as alone."""
    engine, collected = StaticEngine(tiny_static.graphs, max_rows=24), Collected()
    texts = [s for s, _ in tiny_pairs()]
    short_ids = tiny_static.encode(texts[:16])
    long_ids = tiny_static.encode([f"{texts[16]} {texts[17]}", f"{texts[18]} {texts[19]}"])  # longer sources
    short = DecodeOptions(max_length=2)
    greedy, beams = DecodeOptions(min_length=10, max_length=10), DecodeOptions(beam_size=2, n_best=2, min_length=10,
                                                                                max_length=10)
    buckets, bucket = [], engine._bucket
    engine._bucket = lambda rows: buckets.append(rows) or bucket(rows)
    engine.step([collected.sentence(i, short_ids[i], short) for i in range(16)]
                + [collected.sentence(16, long_ids[0], greedy), collected.sentence(17, long_ids[1], beams)])
    while engine.live:
        engine.step()
    assert buckets[0] == 24 and buckets[2:] == [4] * (len(buckets) - 2)
    assert same(collected.results[16], alone(tiny_static.graphs, long_ids[0], greedy))
    assert same(collected.results[17], alone(tiny_static.graphs, long_ids[1], beams))


def test_rows_are_copied_in_place_each_from_what_it_held_before_any_moved(tiny_static):
    """Beams that swap, and one that continues a row another leaves: every target gets its
    source's old contents, in the same buffer (the Gather reads before the ScatterND writes)."""
    cache = StaticCache(tiny_static.graphs, 6)
    rng = np.random.default_rng(0)
    before = [rng.standard_normal(cache_shape(t)).astype(np.float32) for t in cache.past]
    for value, array in zip(cache.past, before):
        value.update_inplace(array)
    addresses = [t.data_ptr() for t in cache.past]
    cache.copy_rows(np.array([0, 1, 3]), np.array([1, 0, 0]))
    for value, old in zip(cache.past, before):
        expected = old.copy()
        expected[[0, 1, 3]] = old[[1, 0, 0]]
        assert np.array_equal(value.numpy(), expected)
    assert [t.data_ptr() for t in cache.past] == addresses


def test_sources_are_placed_in_their_entries_padded_with_zeros_and_the_others_left_alone(tiny_static):
    cache = StaticCache(tiny_static.graphs, 4)
    c = tiny_static.graphs.config
    rng = np.random.default_rng(1)
    new = [rng.standard_normal((2, c.heads, 5, c.head_dim)).astype(np.float32) for _ in cache.cross]
    cache.place([3, 1], new[: c.decoder_layers], new[c.decoder_layers:])
    for value, written in zip(cache.cross, new):
        array = value.numpy()
        assert np.array_equal(array[[3, 1], :, :5], written) and not array[[3, 1], :, 5:].any()
        assert not array[[0, 2]].any()


def test_a_step_covers_the_highest_entry_in_use_even_above_every_slot(tiny_static):
    engine = StaticEngine(tiny_static.graphs, max_rows=24)
    engine._held[[0, 1]] = True
    engine._entry_held[[0, 5]] = True
    assert engine._bucket_rows() == 16
    engine._entry_held[5] = False
    assert engine._bucket_rows() == 4


def test_a_misnamed_dimension_is_refused_not_left_free(tiny_static):
    graphs = tiny_static.graphs
    with pytest.raises(ValueError, match="left free"):
        create_session(graphs.dir / graphs.manifest.graphs["decoder"], graphs.session_config,
                       dimensions={"rows": 2, "capacity": 8, "sources": 2, "source_len": 4, "query_group": 2,
                                   "candidates": 2})


def test_its_caches_hold_the_bound_it_reports_from_the_start(tiny_static):
    engine = StaticEngine(tiny_static.graphs, max_rows=6)
    assert engine.cache_bytes == engine.cache_bytes_at_most
    assert engine.cache.slots == max(6, MAX_BEAM_SIZE)


def test_translate_ids_engines_free_their_caches_when_idle_and_the_services_keep_theirs(tiny_static, monkeypatch):
    """A static cache is allocated at its limits (on a GPU, gigabytes): the engines of
    `translate_ids`, whose schedulers stay with the graphs, free it when their threads end
    idle and allocate it again for the next call; the service's scheduler keeps its own."""
    monkeypatch.setattr(Scheduler, "LINGER_SECONDS", 0.01)
    ids = tiny_static.encode([s for s, _ in tiny_pairs()][:6])
    first = translate_ids(tiny_static.graphs, ids, DecodeOptions(beam_size=2, n_best=2), max_batch=3)
    service = tiny_static.scheduler
    service.submit([Sentence(ids[0], DecodeOptions(), lambda result: None)])
    idle(tiny_static.graphs.schedulers[6], service)
    assert all(e.cache is None and e.cache_bytes == 0 for e in tiny_static.graphs.schedulers[6].engines)
    assert all(e.cache_bytes == e.cache_bytes_at_most for e in service.engines)
    again = translate_ids(tiny_static.graphs, ids, DecodeOptions(beam_size=2, n_best=2), max_batch=3)
    assert all(same(a, b) for a, b in zip(first, again))


def idle(*schedulers: Scheduler) -> None:
    """Wait until every engine thread of `schedulers` has ended."""
    deadline = time.monotonic() + 10
    while any(t is not None for s in schedulers for t in s._threads):
        assert time.monotonic() < deadline, "engine threads still running"
        time.sleep(0.01)


def test_a_failed_step_reaches_its_sentences_and_the_engine_goes_on(tiny_static, monkeypatch):
    engine, collected = StaticEngine(tiny_static.graphs, max_rows=8), Collected()
    ids = tiny_static.encode(["The cat.", "The dog."])
    engine.step([collected.sentence(0, ids[0], DecodeOptions(min_length=6, max_length=6))])
    monkeypatch.setattr(engine._buckets[1], "run", lambda feeds: (_ for _ in ()).throw(RuntimeError("step failed")))
    with pytest.raises(RuntimeError):
        engine.step()
    engine.fail(RuntimeError("step failed"))
    assert isinstance(collected.results[0], RuntimeError) and not engine.live
    monkeypatch.undo()
    engine.step([collected.sentence(1, ids[1], DecodeOptions())])
    while engine.live:
        engine.step()
    assert same(collected.results[1], alone(tiny_static.graphs, ids[1], DecodeOptions()))
