"""The engine on caches allocated once (StaticEngine, server/runtime/static_cache.py): what a
CUDA graph needs, checked on the CPU. It translates as the resizing engine does; a sentence
translates the same alone and among others joining and leaving at random steps; its buffers
keep their addresses whatever joins, leaves or forks; each step runs on a bucket of rows; its
caches hold exactly the bound it reports. (On a GPU, bench/cuda_check.sh runs the captured
steps; see docs/benchmarks.md.)"""

from __future__ import annotations

import pytest

from model.search import MAX_BEAM_SIZE, DecodeOptions
from server.runtime import SessionConfig, Translator, translate_ids
from server.runtime.engine import Engine, Scheduler, StaticEngine
from tests.builders import tiny_pairs
from tests.test_engine import MIXED, Collected, admit_at_random, alone, same


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


def test_continuous_admission_with_mixed_options_changes_no_translation_and_moves_no_buffer(tiny_static):
    """Sentences join a few at a time at random steps, up to 24 rows, beams forking: each
    equals itself decoded alone, every buffer stays where it was allocated, and every step ran
    on a bucket (1, 4, 16 rows, or all 24 slots)."""
    texts = [s for s, _ in tiny_pairs()] * 3
    ids = tiny_static.encode(texts)
    options = [MIXED[i % len(MIXED)] for i in range(len(ids))]
    engine, collected = StaticEngine(tiny_static.graphs, max_rows=24), Collected()
    addresses = [t.data_ptr() for t in (*engine.cache.past, *engine.cache.cross)]
    admit_at_random(engine, collected, ids, options, seed=7)
    for i in range(len(ids)):
        assert same(collected.results[i], alone(tiny_static.graphs, ids[i], options[i])), texts[i]
    assert [t.data_ptr() for t in (*engine.cache.past, *engine.cache.cross)] == addresses
    assert set(engine._buckets) <= {1, 4, 16, 24} and len(engine._buckets) > 1


def test_its_caches_hold_the_bound_it_reports_from_the_start(tiny_static):
    engine = StaticEngine(tiny_static.graphs, max_rows=6)
    assert engine.cache_bytes == engine.cache_bytes_at_most
    assert engine.cache.slots == max(6, MAX_BEAM_SIZE)


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
