"""The batcher's rules, with a recording decode function instead of a model: which requests share a
batch, how long a batch waits, what happens to requests that expire, are cancelled or cannot fit.
No subprocess, no private members: milliseconds each."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from model.search import DecodeOptions, Hypothesis
from server.batcher import Batcher, DeadlineExpiredError, QueueFullError, RequestTooLargeError, split_by_lengths

VERSION = object()  # the batcher only tells versions apart; a decode function gets it back


class Recorder:
    """A decode function: records each batch, answers each sentence with its own ids, and can hold
    batches until released (to fill the queue behind them) or report abandoned sentences."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[list[int]]] = []
        self.options: list[DecodeOptions] = []
        self.released = threading.Event()
        self.started = threading.Event()
        self.abandoned_seen: list[list[bool]] = []
        if not hold:
            self.released.set()

    def __call__(self, version, ids, options, max_batch, abandoned) -> list[list[Hypothesis]]:
        assert version is VERSION
        self.batches.append(ids)
        self.options.append(options)
        self.started.set()
        self.released.wait(10)
        seen = [abandoned(i) for i in range(len(ids))]
        self.abandoned_seen.append(seen)
        return [[] if gone else [Hypothesis(list(sentence), 0.0)] for sentence, gone in zip(ids, seen)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


async def started(decode: Recorder, **settings) -> Batcher:
    batcher = Batcher(decode=decode, **settings)
    batcher.start()
    return batcher


def test_concurrent_requests_with_the_same_options_share_one_batch_and_get_their_own_answers():
    async def scenario():
        decode = Recorder()
        batcher = await started(decode, max_wait_ms=50)
        answers = await asyncio.gather(*(batcher.translate(VERSION, [[n, 3]], DecodeOptions()) for n in range(5)))
        await batcher.close()
        return decode, answers

    decode, answers = run(scenario())
    assert len(decode.batches) == 1 and sorted(decode.batches[0]) == [[n, 3] for n in range(5)]
    assert [a[0][0].tokens for a in answers] == [[n, 3] for n in range(5)]


def test_requests_with_other_options_never_share_a_batch():
    async def scenario():
        decode = Recorder()
        batcher = await started(decode, max_wait_ms=50)
        await asyncio.gather(batcher.translate(VERSION, [[5, 3]], DecodeOptions(beam_size=4)),
                             batcher.translate(VERSION, [[6, 3]], DecodeOptions(beam_size=1)))
        await batcher.close()
        return decode

    decode = run(scenario())
    assert sorted(len(b) for b in decode.batches) == [1, 1]
    assert {o.beam_size for o in decode.options} == {1, 4}


def test_a_lone_request_waits_max_wait_then_decodes_alone():
    async def scenario():
        decode = Recorder()
        batcher = await started(decode, max_wait_ms=100)
        began = time.monotonic()
        await batcher.translate(VERSION, [[5, 3]], DecodeOptions())
        waited = time.monotonic() - began
        await batcher.close()
        return decode, waited

    decode, waited = run(scenario())
    assert decode.batches == [[[5, 3]]]
    assert 0.09 <= waited < 2.0


def test_a_full_batch_does_not_wait():
    async def scenario():
        decode = Recorder()
        batcher = await started(decode, max_wait_ms=5000, max_batch_sentences=4)
        began = time.monotonic()
        await batcher.translate(VERSION, [[n, 3] for n in range(4)], DecodeOptions())
        waited = time.monotonic() - began
        await batcher.close()
        return waited

    assert run(scenario()) < 2.0


def test_waiting_requests_are_shared_between_batches_by_length():
    """The oldest request always goes first; it takes the half of the queue closest to it in length."""
    async def scenario():
        decode = Recorder()
        batcher = await started(decode, max_wait_ms=100, workers=2)
        lengths = (10, 50, 11, 49, 12, 48, 9, 51)  # one sentence each, oldest first
        await asyncio.gather(*(batcher.translate(VERSION, [[5] * n], DecodeOptions()) for n in lengths))
        await batcher.close()
        return decode

    decode = run(scenario())
    assert sorted(len(s) for s in decode.batches[0]) == [9, 10, 11, 12]
    assert sorted(len(s) for batch in decode.batches for s in batch) == sorted((10, 50, 11, 49, 12, 48, 9, 51))


def test_a_request_whose_deadline_passes_in_the_queue_expires_without_being_decoded():
    async def scenario():
        decode = Recorder(hold=True)
        batcher = await started(decode, max_wait_ms=1)
        busy = asyncio.ensure_future(batcher.translate(VERSION, [[5, 3]], DecodeOptions()))
        await asyncio.to_thread(decode.started.wait, 5)  # the only slot is taken
        late = asyncio.ensure_future(batcher.translate(VERSION, [[6, 3]], DecodeOptions(), time.monotonic() + 0.05))
        await asyncio.sleep(0.2)
        decode.released.set()
        await busy
        with pytest.raises(DeadlineExpiredError):
            await late
        await batcher.close()
        return decode

    decode = run(scenario())
    assert decode.batches == [[[5, 3]]]


def test_a_cancelled_request_leaves_its_running_batch_and_the_others_are_answered():
    async def scenario():
        decode = Recorder(hold=True)
        batcher = await started(decode, max_wait_ms=20)
        kept = asyncio.ensure_future(batcher.translate(VERSION, [[5, 3]], DecodeOptions()))
        dropped = asyncio.ensure_future(batcher.translate(VERSION, [[6, 3]], DecodeOptions()))
        await asyncio.to_thread(decode.started.wait, 5)
        dropped.cancel()
        await asyncio.sleep(0.05)
        decode.released.set()
        answer = await kept
        await batcher.close()
        return decode, answer

    decode, answer = run(scenario())
    (batch,), (seen,) = decode.batches, decode.abandoned_seen
    assert dict(zip(map(tuple, batch), seen)) == {(5, 3): False, (6, 3): True}
    assert answer[0][0].tokens == [5, 3]


def test_queue_limits_tell_a_request_that_can_never_fit_from_one_that_must_wait():
    async def scenario():
        decode = Recorder(hold=True)
        batcher = await started(decode, max_wait_ms=1, max_queue_sentences=4)
        with pytest.raises(RequestTooLargeError, match="5 sentences and the server queues at most 4"):
            await batcher.translate(VERSION, [[5, 3]] * 5, DecodeOptions())
        busy = asyncio.ensure_future(batcher.translate(VERSION, [[5, 3]], DecodeOptions()))
        await asyncio.to_thread(decode.started.wait, 5)
        waiting = asyncio.ensure_future(batcher.translate(VERSION, [[6, 3]] * 3, DecodeOptions()))
        await asyncio.sleep(0.05)
        assert batcher.queued_sentences == 3
        with pytest.raises(QueueFullError, match="3 of 4 sentences are waiting and the request has 2; retry later"):
            await batcher.translate(VERSION, [[7, 3]] * 2, DecodeOptions())
        decode.released.set()
        await busy
        assert len(await waiting) == 3
        await batcher.close()

    run(scenario())


def test_split_by_lengths_cuts_consecutive_groups_and_checks_the_total():
    assert split_by_lengths("abcdef", [1, 3, 0, 2]) == [["a"], ["b", "c", "d"], [], ["e", "f"]]
    with pytest.raises(ValueError):
        split_by_lengths([1, 2, 3], [1, 1])
