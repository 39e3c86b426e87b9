"""The engine (server/runtime/engine.py): step-level batching never changes a translation.

Sentences join the rows in flight between steps and leave as they finish; rows with different
options share steps; abandoned sentences leave at the next step; a failed step reaches its
sentences and the engine goes on. Each sentence is compared, token for token and score for
score, with the same sentence decoded alone."""

from __future__ import annotations

import gc
import gzip
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

from model.config import EOS_ID
from model.search import MAX_BEAM_SIZE, DecodeOptions
from server.runtime import OnnxGraphs, Scheduler, Sentence, SessionConfig, Translator, translate_ids
from server.runtime.engine import Engine, _Live
from tests.builders import tiny_pairs
from tests.versions import DEFAULT_VERSION, REPOSITORY

MIXED = [DecodeOptions(), DecodeOptions(beam_size=4), DecodeOptions(beam_size=2, n_best=2, length_penalty=0.5),
         DecodeOptions(min_length=6), DecodeOptions(beam_size=3, max_length=4)]


class RecordingGraphs:
    """The graphs, recording how many rows each decoder step computed; can fail one step."""

    streams = 1

    def __init__(self, graphs, fail_at: int | None = None) -> None:
        self.graphs, self.step_rows, self.fail_at = graphs, [], fail_at

    def __getattr__(self, name):
        return getattr(self.graphs, name)

    def step(self, tokens, *args, **options):
        self.step_rows.append(tokens.shape[0])
        if len(self.step_rows) == self.fail_at:
            raise RuntimeError("the decoder step failed")
        return self.graphs.step(tokens, *args, **options)


class Collected:
    """Sentences whose results are collected by index."""

    def __init__(self) -> None:
        self.results: dict[int, object] = {}
        self.order: list[int] = []

    def sentence(self, i: int, ids, options: DecodeOptions, **kwargs) -> Sentence:
        def done(result, i=i):
            self.results[i] = result
            self.order.append(i)
        return Sentence(ids, options, done, **kwargs)


def alone(graphs, ids, options: DecodeOptions):
    return translate_ids(graphs, [ids], options, max_batch=1)[0]


def same(a, b) -> bool:
    """Token-identical n-best lists, scores equal up to float32 summation order."""
    return [h.tokens for h in a] == [h.tokens for h in b] and np.allclose([h.score for h in a],
                                                                         [h.score for h in b], atol=1e-5)


@pytest.fixture(scope="module")
def tiny(tiny_version) -> Translator:
    return Translator(tiny_version, SessionConfig(device="cpu", streams=1))


def test_sentences_with_different_options_share_steps(tiny):
    graphs = RecordingGraphs(tiny.graphs)
    engine, collected = Engine(graphs, max_rows=64), Collected()
    ids = tiny.encode(["The cat.", "The old red house.", "The dog."])
    options = [DecodeOptions(max_length=5, min_length=5), DecodeOptions(beam_size=4, max_length=3, min_length=3),
               DecodeOptions(beam_size=2, n_best=2, max_length=4, min_length=4)]
    engine.step([collected.sentence(i, ids[i], options[i]) for i in range(3)])
    while engine.live:
        engine.step()
    assert graphs.step_rows == [1 + 4 + 2] * 3 + [1 + 2] + [1]  # one step for all, slots dropped as they free
    for i in range(3):
        assert same(collected.results[i], alone(tiny.graphs, ids[i], options[i]))


def test_a_sentence_joining_a_running_batch_starts_at_once_and_leaves_first(tiny):
    graphs = RecordingGraphs(tiny.graphs)
    engine, collected = Engine(graphs, max_rows=64), Collected()
    ids = tiny.encode(["The old red house.", "The cat.", "The dog."])
    long, short = DecodeOptions(beam_size=2, min_length=20, max_length=20), DecodeOptions(max_length=3, min_length=3)
    engine.step([collected.sentence(0, ids[0], long), collected.sentence(1, ids[1], long)])
    for _ in range(4):
        engine.step()
    engine.step([collected.sentence(2, ids[2], short)])
    held = [engine.rows]
    while engine.live:
        engine.step()
        held.append(engine.rows)
    assert graphs.step_rows == [4] * 5 + [5] * 15  # 20 steps for the long ones, the short one's slot kept
    assert held == [5] * 2 + [4] * 12 + [0]  # rows held after each step: the short one left after its 3rd
    assert collected.order == [2, 0, 1]
    for i, options in ((0, long), (1, long), (2, short)):
        assert same(collected.results[i], alone(tiny.graphs, ids[i], options))


def admit_at_random(engine: Engine, collected: Collected, ids, options: list[DecodeOptions], seed: int) -> None:
    """Step `engine` until every sentence is done, 0 to 2 of them joining at each step while
    they fit."""
    rng = np.random.default_rng(seed)
    waiting = list(range(len(ids)))
    while waiting or engine.live:
        joining = []
        for _ in range(int(rng.integers(0, 3))):
            if waiting and options[waiting[0]].beam_size <= engine.free_rows - sum(s.rows for s in joining):
                i = waiting.pop(0)
                joining.append(collected.sentence(i, ids[i], options[i]))
        engine.step(joining)


def translates_each_as_alone_under_random_admission(translator: Translator, engine: Engine) -> None:
    """The tiny corpus three times over, with mixed options, through `engine` at random
    admission: each sentence equals itself decoded alone (by the translator's own engines)."""
    texts = [s for s, _ in tiny_pairs()] * 3
    ids = translator.encode(texts)
    options = [MIXED[i % len(MIXED)] for i in range(len(ids))]
    collected = Collected()
    admit_at_random(engine, collected, ids, options, seed=7)
    for i in range(len(ids)):
        assert same(collected.results[i], alone(translator.graphs, ids[i], options[i])), texts[i]


def test_continuous_admission_of_many_sentences_with_mixed_options_changes_no_translation(tiny):
    """Sentences join a few at a time at random steps, up to 24 rows in flight."""
    translates_each_as_alone_under_random_admission(tiny, Engine(tiny.graphs, max_rows=24))


def test_an_abandoned_sentence_leaves_at_the_next_step_and_a_waiting_one_is_never_encoded(tiny):
    graphs = RecordingGraphs(tiny.graphs)
    scheduler = Scheduler(graphs, max_rows=1, streams=1)
    collected, gone = Collected(), threading.Event()
    ids = tiny.encode(["The cat.", "The dog."])
    options = DecodeOptions(min_length=8, max_length=8)
    first = collected.sentence(0, ids[0], options, abandoned=lambda: len(graphs.step_rows) >= 3)
    second = collected.sentence(1, ids[1], options, abandoned=gone.is_set, priority=1)
    gone.set()
    scheduler.submit([first, second])
    while len(collected.results) < 2:
        threading.Event().wait(0.01)
    assert collected.results == {0: [], 1: []}
    assert graphs.step_rows == [1, 1, 1]


def test_waiting_sentences_are_admitted_by_priority(tiny):
    scheduler, collected = Scheduler(tiny.graphs, max_rows=1, streams=1), Collected()
    ids = tiny.encode(["The cat."])[0]
    scheduler.submit([collected.sentence(i, ids, DecodeOptions(), priority=p) for i, p in enumerate([3.0, 1.0, 2.0])])
    while len(collected.results) < 3:
        threading.Event().wait(0.01)
    assert collected.order == [1, 2, 0]


def test_a_failed_step_reaches_its_sentences_and_the_engine_goes_on(tiny):
    graphs = RecordingGraphs(tiny.graphs, fail_at=2)
    scheduler, collected = Scheduler(graphs, max_rows=8, streams=1), Collected()
    ids = tiny.encode(["The cat.", "The dog."])
    scheduler.submit([collected.sentence(0, ids[0], DecodeOptions(min_length=4, max_length=4))])
    while 0 not in collected.results:
        threading.Event().wait(0.01)
    assert isinstance(collected.results[0], RuntimeError)
    scheduler.submit([collected.sentence(1, ids[1], DecodeOptions())])
    while 1 not in collected.results:
        threading.Event().wait(0.01)
    assert same(collected.results[1], alone(tiny.graphs, ids[1], DecodeOptions()))


@pytest.mark.slow
def test_the_default_model_under_continuous_admission_of_200_sentences_translates_each_as_alone():
    """The issue's guarantee on the committed model, fp32 on the CPU: 201 real sentences (help
    texts from the committed corpus) with mixed options join 64 rows in flight at random steps;
    each equals itself decoded alone."""
    translator = Translator(DEFAULT_VERSION, SessionConfig(device="cpu", streams=1, intra_op_threads=1))
    with gzip.open(REPOSITORY.parent / "data" / "corpus" / "lohelp.en-es.tsv.gz", "rt", encoding="utf-8") as corpus:
        sources = [line.split("\t")[0] for line in corpus if 3 <= len(line.split("\t")[0].split()) <= 40]
    rng = np.random.default_rng(12)
    texts = [sources[i] for i in rng.choice(len(sources), 201, replace=False)]
    ids = translator.encode(texts)
    options = [MIXED[i % 3] for i in range(len(ids))]  # greedy, beam 4, beam 2 with 2-best
    engine, collected = Engine(translator.graphs, max_rows=64), Collected()
    waiting = list(range(len(ids)))
    while waiting or engine.live:
        joining = []
        while waiting and rng.random() < 0.5 and options[waiting[0]].beam_size <= (
                engine.free_rows - sum(s.rows for s in joining)):
            i = waiting.pop(0)
            joining.append(collected.sentence(i, ids[i], options[i]))
        engine.step(joining)
    differing = [i for i in range(len(ids))
                 if not same(collected.results[i], alone(translator.graphs, ids[i], options[i]))]
    assert differing == []


def test_a_greedy_sentence_gets_the_same_bits_beside_a_beam_sentence_as_alone(tiny):
    """A step's query grid is at least two slots wide (graph_io.query_width): ONNX Runtime's
    one-row matmul sums in another order than its wider ones, so a greedy sentence decoded alone
    (one row per source) and beside a 4-beam sentence (four slots per source) would otherwise
    differ in the last bits of its scores."""
    ids = tiny.encode(["The old red house.", "The cat is on the table."])
    greedy, beam = DecodeOptions(min_length=8, max_length=8), DecodeOptions(beam_size=4, min_length=8, max_length=8)
    engine, collected = Engine(tiny.graphs, max_rows=8), Collected()
    engine.step([collected.sentence(0, ids[0], greedy), collected.sentence(1, ids[1], beam)])
    while engine.live:
        engine.step()
    by_itself = alone(tiny.graphs, ids[0], greedy)
    assert [h.tokens for h in collected.results[0]] == [h.tokens for h in by_itself]
    assert [h.score for h in collected.results[0]] == [h.score for h in by_itself]  # bit for bit


def test_beams_forking_keep_track_of_how_many_first_tokens_each_pair_shares():
    """_Live.fork's table is what the beams' reordering copies by: after any sequence of forks,
    shared[a][b] is the length of beams a and b's common prefix, and fork returns, for each new
    beam, how much of its old history its origin's shares (its columns up to there stay put)."""
    def common(x: list[int], y: list[int]) -> int:
        return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))

    rng = np.random.default_rng(11)
    k = 4
    live = _Live.start(Sentence([5, EOS_ID], DecodeOptions(beam_size=k), lambda result: None), 40)
    histories: list[list[int]] = [[] for _ in range(k)]
    for step in range(1, 30):
        origins = rng.integers(0, k, k).tolist()
        live.step = step
        kept = live.fork(origins)
        assert kept == [common(histories[j], histories[origin]) for j, origin in enumerate(origins)]
        histories = [histories[origin] + [step * k + j] for j, origin in enumerate(origins)]  # each new token differs
        assert live.shared == [[common(a, b) for b in histories] for a in histories]


def test_a_cache_resize_holds_one_tensor_twice_never_the_whole_cache_twice(tiny):
    """A wider cache is made tensor by tensor, each copy replacing its original in the engine's
    list at once: at its peak a resize holds the new cache plus one old tensor, not the old and
    the new caches side by side (the server's peak memory under load, docs/benchmarks.md)."""
    g = tiny.graphs
    tracemalloc.start()
    try:
        cache = [np.ones((16, g.config.heads, 64, g.config.head_dim), g.dtype) for _ in range(4)]
        old_bytes = cache[0].nbytes
        tracemalloc.reset_peak()
        Engine(g, 16)._arranged(cache, None, 0, 256)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(t.shape[2] == 256 and (t[:, :, :64] == 1).all() and not t[:, :, 64:].any() for t in cache)
    assert peak - now < 1.5 * old_bytes  # the whole cache held twice would be 4 old tensors over


def test_its_caches_reach_the_bound_it_reports_for_its_limits_and_never_pass_it(tiny):
    """`cache_bytes_at_most` (logged when a version is accepted) is what the configured limits
    allow: max_rows sentences with sources and translations of max_positions tokens reach it,
    and a mixed run under continuous admission never passes it. (An engine narrower than
    MAX_BEAM_SIZE rows still takes the widest beam search alone, so that is its floor.)"""
    c = tiny.graphs.config
    engine, collected = Engine(tiny.graphs, max_rows=MAX_BEAM_SIZE), Collected()
    longest = DecodeOptions(min_length=c.max_positions - 1, max_length=c.max_positions - 1)
    rng = np.random.default_rng(3)
    sources = [[*rng.integers(4, c.vocab_size, c.max_positions - 1).tolist(), EOS_ID] for _ in range(MAX_BEAM_SIZE)]
    engine.step([collected.sentence(i, ids, longest) for i, ids in enumerate(sources)])
    held = [engine.cache_bytes]
    while engine.live:
        engine.step()
        held.append(engine.cache_bytes)
    assert max(held) == engine.cache_bytes_at_most

    ids = tiny.encode([s for s, _ in tiny_pairs()] * 2)
    engine = Engine(tiny.graphs, max_rows=6)
    waiting = list(range(len(ids)))
    while waiting or engine.live:
        joining = []
        if waiting and MIXED[waiting[0] % len(MIXED)].beam_size <= engine.free_rows:
            i = waiting.pop(0)
            joining.append(collected.sentence(i, ids[i], MIXED[i % len(MIXED)]))
        engine.step(joining)
        assert engine.cache_bytes <= engine.cache_bytes_at_most


def test_graphs_that_translate_ids_used_are_freed_once_their_threads_end(tiny_version, monkeypatch):
    """The decode loops kept for back-to-back calls live as long as their graphs, no longer: an
    unloaded model version's sessions are freed."""
    monkeypatch.setattr(Scheduler, "LINGER_SECONDS", 0.01)
    graphs = OnnxGraphs(tiny_version, SessionConfig(device="cpu", streams=1))
    translate_ids(graphs, [[5, 3]], DecodeOptions(max_length=2))
    freed = weakref.ref(graphs)
    del graphs
    for _ in range(200):
        gc.collect()
        if freed() is None:
            break
        threading.Event().wait(0.01)
    assert freed() is None


def test_engines_have_glibc_map_their_caches_so_freed_ones_leave_the_process(tiny):
    """server/runtime/allocator.py: creating an engine fixes malloc's mmap threshold, so a cache
    that the engine replaces is unmapped when freed instead of staying in malloc's heap (this
    image runs glibc, where the call succeeds)."""
    from server.runtime.allocator import map_large_blocks

    map_large_blocks.cache_clear()
    Engine(tiny.graphs, max_rows=4)
    assert map_large_blocks.cache_info().currsize == 1  # the engine made the call
    assert map_large_blocks() is True
