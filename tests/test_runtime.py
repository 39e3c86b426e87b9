"""The ONNX Runtime side: torch-free, device selection with a clear fallback, equal to the reference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model.checkpoint import load_checkpoint
from model.search import DecodeOptions
from model.translate import translate_hypotheses
from server.runtime import DeviceUnavailableError, OnnxGraphs, SessionConfig, Translator, pad_ids, translate_ids
from server.runtime import sessions
from server.runtime.graph_io import MAX_CANDIDATES, candidates_for
from tests.builders import tiny_pairs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["host cache", "device cache"])
def translator(request, tiny_version, device) -> Translator:
    """Every decoding test runs twice: with the key/value cache in numpy arrays, and kept in
    ONNX Runtime values through I/O binding (the CUDA default; on the CPU here it runs the same
    code, so the suite covers it without a GPU). `pytest --device cuda` runs them on a GPU."""
    return Translator(tiny_version, SessionConfig(device=device, device_cache=request.param == "device cache"))


def test_memorised_pairs_come_back_through_onnx_runtime(translator):
    pairs = tiny_pairs()
    for beam in (1, 4):
        assert translator.translate([s for s, _ in pairs], beam_size=beam) == [t for _, t in pairs]


def test_greedy_and_beam_equal_the_pytorch_reference(translator, tiny_checkpoint):
    """Token for token and score for score, including n-best lists and length options."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    texts = [s for s, _ in tiny_pairs()] + ["The dog.", "Red white old small house table."]
    for options in (DecodeOptions(), DecodeOptions(beam_size=4, n_best=4), DecodeOptions(beam_size=3, min_length=6),
                    DecodeOptions(beam_size=2, max_length=3, length_penalty=0.0),
                    DecodeOptions(beam_size=4, min_length=5, max_length=5)):
        reference = translate_hypotheses(checkpoint.model, checkpoint.tokenizer, texts, options=options)
        ids = translator.encode(texts)
        ours = translate_ids(translator.graphs, ids, options, max_batch=len(ids))
        assert [[h.tokens for h in hyps] for hyps in ours] == [[h.tokens for h in hyps] for hyps in reference]
        for a, b in zip(ours, reference):
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_equal_min_and_max_length_give_exactly_that_many_tokens(translator):
    for beam in (1, 3):
        hyps = translator.translate_hypotheses(["The cat.", "The old red house."], beam_size=beam, n_best=beam,
                                               min_length=9, max_length=9)
        assert {h.tokens for sentence in hyps for h in sentence} == {9}


def test_batch_composition_never_changes_a_translation(translator):
    """A sentence alone, and inside a padded batch of 32 of different lengths, decodes the same."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 40, 32)
    sources = [list(rng.integers(4, 300, n - 1)) + [3] for n in lengths]
    for options in (DecodeOptions(max_length=12), DecodeOptions(beam_size=4, n_best=2, max_length=12)):
        together = translate_ids(translator.graphs, sources, options, max_batch=32)
        for i in (0, 7, 31):
            alone = translate_ids(translator.graphs, [sources[i]], options)[0]
            assert [h.tokens for h in alone] == [h.tokens for h in together[i]]


class StepCounter:
    """The graphs, recording how many rows each decoder step computed (in one stream, so in order)."""

    streams = 1

    def __init__(self, graphs) -> None:
        self.graphs, self.step_rows = graphs, []
        self.schedulers = {}  # its own decode loops, which step through it

    def __getattr__(self, name):
        return getattr(self.graphs, name)

    def step(self, tokens, *args, **options):
        self.step_rows.append(tokens.shape[0])
        return self.graphs.step(tokens, *args, **options)


def test_abandoned_sentences_leave_the_batch_and_the_others_are_unchanged(translator):
    """A sentence nobody waits for stops costing compute at the next step; its batch mates decode as before."""
    ids = translator.encode(["The cat.", "The old red house.", "The dog."])
    for beam in (1, 3):
        options = DecodeOptions(beam_size=beam, min_length=8, max_length=8)
        expected = translate_ids(translator.graphs, ids, options)
        counter = StepCounter(translator.graphs)

        def abandoned(sentence: int) -> bool:
            return sentence == 1 and len(counter.step_rows) > 2

        out = translate_ids(counter, ids, options, abandoned=abandoned)
        assert out[1] == []
        for i in (0, 2):  # scores within float32 rounding: padding differs between the two runs
            assert [h.tokens for h in out[i]] == [h.tokens for h in expected[i]]
            assert [h.score for h in out[i]] == pytest.approx([h.score for h in expected[i]], abs=1e-5)
        # Three sentences for three steps, then two: nothing was computed for sentence 1 after it went.
        assert counter.step_rows == [3 * beam] * 3 + [2 * beam] * 5


def test_streams_split_a_batch_without_changing_any_translation(tiny_version):
    """Two streams decode a batch's halves at once; every sentence comes out as with one stream."""
    texts = [s for s, _ in tiny_pairs()] + ["The dog.", "Red white old small house table."]
    one, two = (Translator(tiny_version, SessionConfig(device="cpu", streams=n, intra_op_threads=1)) for n in (1, 2))
    assert (one.graphs.streams, two.graphs.streams) == (1, 2)
    for beam in (1, 4):
        a = one.translate_hypotheses(texts, beam_size=beam, n_best=beam)
        b = two.translate_hypotheses(texts, beam_size=beam, n_best=beam)
        assert [[h.text for h in hyps] for hyps in a] == [[h.text for h in hyps] for hyps in b]


def test_n_best_is_ordered_and_lengths_are_respected(translator):
    hyps = translator.translate_hypotheses(["The old cat."], beam_size=4, n_best=4, max_length=5)[0]
    assert len(hyps) == 4
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert all(h.tokens <= 5 for h in hyps)
    assert all(h.tokens >= 7 for h in translator.translate_hypotheses(["The cat."], beam_size=2, min_length=7)[0])


def test_over_long_input_is_rejected_and_empty_batch_is_empty(translator):
    with pytest.raises(ValueError, match="at most 64"):
        translator.translate(["The cat.", " ".join(["house"] * 200)])
    assert translator.translate([]) == []
    assert translate_ids(translator.graphs, [], DecodeOptions()) == []


def test_the_chosen_device_runs_the_graphs(translator, device):
    assert translator.provider == {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]


def test_the_cache_is_kept_on_the_device_by_default_on_cuda_only(tiny_version, device):
    graphs = Translator(tiny_version, SessionConfig(device=device)).graphs
    assert graphs.device_cache == (device == "cuda")


def test_a_step_returns_as_many_best_tokens_as_asked_best_first(translator):
    """The step's top-k width is an input (`candidates`): each row's best k tokens are the first
    k of its best MAX_CANDIDATES, and the engine asks for 2 x its widest beam (greedy: 2)."""
    graphs = translator.graphs
    source = pad_ids(translator.encode(["The cat.", "The old red house.", "The dog."]), 0)
    args = (np.full((3, 1), 1, dtype=np.int64), np.zeros(3, np.int64), np.ones(3, bool), *graphs.encode(source),
            source != 0, *graphs.empty_cache(3, 4))
    widest = graphs.step(*args, candidates=MAX_CANDIDATES)
    assert widest.top_ids.shape == (3, MAX_CANDIDATES)
    for k in (1, 2, 8):
        out = graphs.step(*args, candidates=k)
        assert out.top_ids.shape == out.top_log_probs.shape == (3, k)
        assert np.array_equal(out.top_ids, widest.top_ids[:, :k])
        assert np.array_equal(out.top_log_probs, widest.top_log_probs[:, :k])
    assert [candidates_for(beam) for beam in (1, 4, 16)] == [2, 8, MAX_CANDIDATES]


def test_a_step_ranks_log_probabilities_under_the_decoding_rules(translator):
    """The step's best tokens are the top-k of log_softmax(logits) with PAD and BOS ruled out,
    and EOS too where `eos_allowed` is False: rows 1 and 2 are the same sentence, EOS allowed
    in row 2 only."""
    graphs, c = translator.graphs, translator.graphs.config
    source = pad_ids(translator.encode(["The cat.", "The old red house.", "The old red house."]), 0)
    tokens = np.array([[c.bos_id], [c.bos_id], [c.bos_id]])
    eos_allowed = np.array([True, False, True])
    args = (tokens, np.zeros(3, np.int64), eos_allowed, *graphs.encode(source), source != 0, *graphs.empty_cache(3))
    logits = graphs.step_logits(*args)[0].astype(np.float64)
    out = graphs.step(*args, candidates=MAX_CANDIDATES)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    log_probs[:, [c.pad_id, c.bos_id]] = -np.inf
    log_probs[~eos_allowed, c.eos_id] = -np.inf
    expected = np.argsort(-log_probs, axis=-1, kind="stable")[:, :MAX_CANDIDATES]
    assert np.array_equal(out.top_ids, expected)
    assert np.allclose(out.top_log_probs, np.take_along_axis(log_probs, expected, -1), atol=1e-5)
    assert c.eos_id in out.top_ids[2] and c.eos_id not in out.top_ids[1]


def test_a_device_cache_stays_in_onnx_runtime_values_on_the_device(tiny_version, device):
    """Encoder outputs, the cache and each step's new keys stay device values; only the best
    tokens come back as host arrays. New positions are written in place; moved, selected and
    joined rows hold exactly what was asked."""
    translator = Translator(tiny_version, SessionConfig(device=device, device_cache=True))
    graphs = translator.graphs
    source = pad_ids(translator.encode(["The cat.", "The old red house.", "The dog."]), 0)
    cross_k, cross_v = graphs.encode(source)
    cache_k, cache_v = graphs.empty_cache(3, 4)
    positions = np.array([0, 2, 1])
    out = graphs.step(np.full((3, 1), 1, dtype=np.int64), positions, np.ones(3, bool), cross_k, cross_v,
                      source != 0, cache_k, cache_v)
    assert isinstance(out.top_ids, np.ndarray) and out.top_ids.shape[0] == 3
    for value in (*cross_k, *cross_v, *out.keys, *out.values):
        assert isinstance(value, ort.OrtValue) and value.device_name() == device
    cache = graphs.append(cache_k, positions, out.keys)
    for value, new in zip(cache, out.keys):
        assert isinstance(value, ort.OrtValue) and value.device_name() == device
        expected = np.zeros(value.shape(), graphs.dtype)
        expected[np.arange(3), :, positions] = new.numpy()[:, :, 0]
        assert np.array_equal(value.numpy(), expected)
    buffers = [value.data_ptr() for value in cache]
    again = graphs.append(cache, positions + 1, out.values)
    assert [value.data_ptr() for value in again] == buffers  # written in place, not copied
    assert np.array_equal(again[0].numpy()[np.arange(3), :, positions + 1], out.values[0].numpy()[:, :, 0])
    rows = again[0].numpy()
    moved = graphs.move(again, np.array([0]), np.array([2]))
    assert np.array_equal(moved[0].numpy(), rows[[2, 1, 2]]) and moved[0].device_name() == device
    order = [2, 0, 0]
    keys = graphs.select(moved, order)
    for before, after in zip(moved, keys):
        assert after.device_name() == device
        assert np.array_equal(after.numpy(), before.numpy()[order])
    assert graphs.select(moved, [0, 1, 2]) is moved  # nothing moved, nothing copied
    narrow = graphs.select(cross_k, [1], (0, 2))
    assert np.array_equal(narrow[0].numpy(), cross_k[0].numpy()[[1], :, 0:2])
    joined = graphs.join(keys, out.keys, 6)
    host = graphs.join([k.numpy() for k in keys], [k.numpy() for k in out.keys], 6)
    for value, expected in zip(joined, host):
        assert value.device_name() == device and np.array_equal(value.numpy(), expected)
    assert host[0].shape[:3] == (6, out.keys[0].shape()[1], 6)
    assert np.array_equal(host[0][:3, :, :4], keys[0].numpy()) and not host[0][:3, :, 4:].any()
    assert np.array_equal(host[0][3:, :, :1], out.keys[0].numpy()) and not host[0][3:, :, 1:].any()


def test_beams_continuing_other_beams_take_copies_of_their_rows_as_they_were(tiny_version):
    """Host caches: each moved row gets its source's columns [start, stop) as they were before any
    row moved (chains, swaps and longer cycles of beams included); nothing else changes."""
    graphs = OnnxGraphs(tiny_version, SessionConfig(device="cpu"))
    rng = np.random.default_rng(0)
    cases = [([0, 1], [1, 0]), ([0, 1, 2], [1, 2, 0]), ([3, 2, 1], [2, 1, 0]), ([1, 2, 3], [0, 0, 0])]
    for _ in range(300):
        rows = int(rng.integers(2, 9))
        targets = rng.choice(rows, int(rng.integers(1, rows + 1)), replace=False)
        sources = rng.integers(0, rows, len(targets))
        cases.append((targets[sources != targets].tolist(), sources[sources != targets].tolist()))
    for targets, sources in cases:
        cache = [rng.random((9, 2, 6, 3)).astype(np.float32) for _ in range(2)]
        before = [t.copy() for t in cache]
        stops = rng.integers(0, 7, len(targets))
        columns = np.stack([rng.integers(0, stops + 1), stops], axis=1)
        moved = graphs.move(cache, np.array(targets, np.int64), np.array(sources, np.int64), columns)
        whole = graphs.move([t.copy() for t in before], np.array(targets, np.int64), np.array(sources, np.int64))
        for after, all_columns, old in zip(moved, whole, before):
            expected, expected_whole = old.copy(), old.copy()
            for target, source, (start, stop) in zip(targets, sources, columns):
                expected[target, :, start:stop] = old[source, :, start:stop]
                expected_whole[target] = old[source]
            assert np.array_equal(after, expected) and np.array_equal(all_columns, expected_whole)


def test_cuda_unavailable_falls_back_with_one_clear_line(tiny_version, caplog, monkeypatch):
    """This machine has onnxruntime-gpu without CUDA 13 / cuDNN 9: the real fallback path."""
    monkeypatch.setattr(sessions, "cuda_unavailable_reason", lambda: "its library cannot load (libcublasLt.so.13)")
    sessions._log_fallback_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="rosetta.sessions"):
        translator = Translator(tiny_version, SessionConfig(device="auto"))
    assert translator.provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "running on CPU" in lines[0] and "libcublasLt" in lines[0]
    with pytest.raises(DeviceUnavailableError, match="device 'cuda' was asked for"):
        Translator(tiny_version, SessionConfig(device="cuda"))


def test_the_real_cuda_probe_names_what_is_missing():
    reason = sessions.cuda_unavailable_reason()
    if reason is None:  # a machine with a working CUDA provider: nothing to explain
        assert sessions.providers_for("cuda")[0] == sessions.CUDA
    else:
        assert "cannot load" in reason or "no CUDA provider" in reason


@pytest.mark.parametrize("bad", [dict(device="gpu"), dict(optimization="max"), dict(intra_op_threads=-1),
                                 dict(max_rows=-1)])
def test_bad_session_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SessionConfig(**bad)


@pytest.mark.parametrize("cores, streams, threads, expected", [
    (2, 0, 0, (2, 1)),  # the default on 2 cores: two single-threaded engines
    (16, 0, 0, (16, 1)),
    (16, 2, 0, (2, 8)),  # fixed streams: the cores left go to threads
    (16, 0, 3, (16, 3)),
    (1, 0, 0, (1, 1)),  # never below one
])
def test_streams_and_threads_divide_the_cores(monkeypatch, cores, streams, threads, expected):
    monkeypatch.setattr(sessions, "available_cores", lambda: cores)
    config = SessionConfig(device="cpu", streams=streams, intra_op_threads=threads)
    assert (config.cpu_streams(), config.cpu_threads()) == expected


@pytest.mark.parametrize("spinning", [True, False])
def test_only_the_decoder_step_lets_its_threads_spin(tiny_version, spinning):
    """Spinning threads answer the step's many short parallel sections at once; the encoder's and
    the cache operations' would take the cores from it (sessions.py: SessionConfig.spinning)."""
    graphs = OnnxGraphs(tiny_version, SessionConfig(device="cpu", streams=1, intra_op_threads=2, spinning=spinning,
                                                    device_cache=True))  # the cache operations as sessions, as on CUDA
    translate_ids(graphs, [[5, 6, 3], [7, 3]], DecodeOptions(beam_size=2, max_length=4))  # builds them

    def spins(session: ort.InferenceSession) -> bool:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    sessions = graphs.sessions
    assert any(name.startswith("append") for name in sessions)
    assert {name for name, session in sessions.items() if spins(session)} == ({"decoder"} if spinning else set())


def test_the_encoder_returns_its_memory_after_each_call_and_the_step_keeps_its_arena(tiny_version):
    """Admissions encode batches of any size: an arena would keep the largest one's intermediates
    reserved for the process's life (graphs.py); the step reuses the same shapes every token."""
    graphs = OnnxGraphs(tiny_version, SessionConfig(device="cpu"))
    assert not graphs.encoder.get_session_options().enable_cpu_mem_arena
    assert graphs.decoder.get_session_options().enable_cpu_mem_arena


def test_rows_in_flight_default_by_device():
    assert SessionConfig().rows_limit(sessions.CPU) == 128 and SessionConfig().rows_limit(sessions.CUDA) == 4096
    assert SessionConfig(max_rows=24).rows_limit(sessions.CUDA) == 24


def test_best_continuations_from_per_row_top_k_equal_a_full_top_k():
    """Each beam row's best 2K tokens always hold the sentence's best 2K of all K*V continuations."""
    from server.runtime.engine import best_continuations

    rng = np.random.default_rng(0)
    sentences, k, vocab = 5, 4, 50
    log_probs = np.log(rng.dirichlet(np.ones(vocab), sentences * k)).astype(np.float32)
    beam_scores = rng.normal(-3, 2, (sentences, k)).astype(np.float32)
    beam_scores[0, 1:] = -np.inf  # the first step: only beam 0 is real
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, :2 * k]
    scores, flat = best_continuations(beam_scores, np.take_along_axis(log_probs, order, axis=1), order, vocab, 2 * k)
    full = (beam_scores.reshape(-1, 1) + log_probs).reshape(sentences, k * vocab)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :2 * k]
    assert np.array_equal(flat, expected)
    assert np.array_equal(scores, np.take_along_axis(full, expected, axis=1))
