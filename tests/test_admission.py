"""Admission's rules, with a stand-in scheduler instead of a model: answers, admission order,
deadlines, cancellation, queue limits and errors. No subprocess, no private members:
milliseconds each. The real engines' rules are tests/test_engine.py's."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from model.search import DecodeOptions, Hypothesis
from server.admission import (MAX_DELAY, SECONDS_PER_TOKEN, Admission, DeadlineExpiredError, QueueFullError,
                              RequestTooLargeError)
from server.runtime import Sentence

VERSION = object()  # admission only hands the version to scheduler_for


class Engines:
    """A scheduler: answers each sentence with its own ids from another thread, once released;
    a sentence nobody waits for any more gets [] (as the engine drops it); `fail` answers errors."""

    def __init__(self, hold: bool = False, fail: Exception | None = None) -> None:
        self.submitted: list[Sentence] = []
        self.released = threading.Event()
        self.fail = fail
        self.answered = 0
        if not hold:
            self.released.set()

    @property
    def waiting(self) -> int:
        return len(self.submitted) - self.answered

    def submit(self, sentences) -> None:
        batch = list(sentences)
        self.submitted += batch
        threading.Thread(target=self._answer, args=(batch,)).start()

    def _answer(self, batch: list[Sentence]) -> None:
        self.released.wait(10)
        for sentence in batch:
            self.answered += 1
            if self.fail:
                sentence.done(self.fail)
            else:
                sentence.done([] if sentence.abandoned() else [Hypothesis(list(sentence.ids), 0.0)])


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def admission(engines: Engines, **settings) -> Admission:
    return Admission(scheduler_for=lambda version: engines, **settings)


def test_every_request_gets_its_own_answers_in_order_and_its_stats():
    async def scenario():
        engines, stats = Engines(), []
        admit = admission(engines)
        admit.on_request.append(stats.append)
        answers = await asyncio.gather(*(admit.translate(VERSION, [[n, 3], [n, n, 3]], DecodeOptions())
                                         for n in range(5)))
        await admit.close()
        return engines, answers, stats

    engines, answers, stats = run(scenario())
    assert [[h[0].tokens for h in a] for a in answers] == [[[n, 3], [n, n, 3]] for n in range(5)]
    assert len(engines.submitted) == 10
    assert sorted(s.generated_tokens for s in stats) == [5] * 5 and {s.sentences for s in stats} == {2}


def submitted_in_turns(*turns: list[list[int]]) -> list[Sentence]:
    """The sentences as the scheduler got them: each turn's one-sentence requests sent together
    at beam 4, turns 0.01 s apart, none answered before the last turn is in."""
    async def scenario():
        engines = Engines(hold=True)
        admit, calls = admission(engines), []
        for turn in turns:
            calls += [asyncio.ensure_future(admit.translate(VERSION, [ids], DecodeOptions(beam_size=4)))
                      for ids in turn]
            await asyncio.sleep(0.01)
        engines.released.set()
        await asyncio.gather(*calls)
        return engines.submitted

    return run(scenario())


def test_a_short_sentence_is_admitted_before_long_ones_sent_just_before_it_but_not_before_old_ones():
    """Priority: arrival time plus SECONDS_PER_TOKEN per source token and beam."""
    old_long, short, new_long = submitted_in_turns([[5] * 20 + [3]], [[6] * 4 + [3], [7] * 20 + [3]])
    assert short.priority < old_long.priority < new_long.priority
    # short and new_long were sent together: 16 more source tokens at beam 4 put new_long behind.
    assert SECONDS_PER_TOKEN * 21 * 4 < MAX_DELAY
    assert new_long.priority - short.priority == pytest.approx(SECONDS_PER_TOKEN * 16 * 4, abs=0.01)


def test_a_long_sentence_is_passed_only_by_requests_that_arrive_within_max_delay_of_it():
    """The work-proportional delay stops at MAX_DELAY: 200 tokens at beam 4 would be 8 s."""
    very_long, short = submitted_in_turns([[5] * 200 + [3]], [[6] * 4 + [3]])
    assert SECONDS_PER_TOKEN * 201 * 4 > MAX_DELAY
    # The short one, sent 0.01 s later with a delay of 5 x 4 x SECONDS_PER_TOKEN, still goes first...
    assert short.priority < very_long.priority
    # ...but the long one's delay is MAX_DELAY, not 8 s: anything sent over MAX_DELAY after it waits.
    expected = MAX_DELAY - 0.01 - SECONDS_PER_TOKEN * 5 * 4
    assert very_long.priority - short.priority == pytest.approx(expected, abs=0.01)


def test_a_request_whose_deadline_has_passed_is_refused_without_decoding():
    async def scenario():
        engines = Engines()
        with pytest.raises(DeadlineExpiredError):
            await admission(engines).translate(VERSION, [[5, 3]], DecodeOptions(), time.monotonic() - 1)
        return engines

    assert run(scenario()).submitted == []


def test_a_deadline_passing_during_decoding_drops_the_request_and_tells_its_caller():
    async def scenario():
        engines = Engines(hold=True)
        admit = admission(engines)
        late = asyncio.ensure_future(admit.translate(VERSION, [[6, 3]], DecodeOptions(), time.monotonic() + 0.05))
        kept = asyncio.ensure_future(admit.translate(VERSION, [[5, 3]], DecodeOptions()))
        await asyncio.sleep(0.1)
        engines.released.set()
        with pytest.raises(DeadlineExpiredError):
            await late
        answer = await kept
        await admit.close()
        return engines, answer

    engines, answer = run(scenario())
    assert answer[0][0].tokens == [5, 3]
    late, kept = engines.submitted
    assert late.abandoned() and not kept.abandoned()


def test_a_cancelled_call_is_abandoned_and_the_others_are_answered():
    async def scenario():
        engines = Engines(hold=True)
        admit = admission(engines)
        dropped = asyncio.ensure_future(admit.translate(VERSION, [[6, 3]], DecodeOptions()))
        kept = asyncio.ensure_future(admit.translate(VERSION, [[5, 3]], DecodeOptions()))
        await asyncio.sleep(0.01)
        dropped.cancel()
        await asyncio.sleep(0.01)
        gone = engines.submitted[0].abandoned()
        engines.released.set()
        answer = await kept
        await admit.close()
        return gone, answer

    gone, answer = run(scenario())
    assert gone and answer[0][0].tokens == [5, 3]


def test_queue_limits_tell_a_request_that_can_never_fit_from_one_that_must_wait():
    async def scenario():
        engines = Engines(hold=True)
        admit = admission(engines, max_queue_sentences=4)
        with pytest.raises(RequestTooLargeError, match="at most 4"):
            await admit.translate(VERSION, [[5, 3]] * 5, DecodeOptions())
        waiting = asyncio.ensure_future(admit.translate(VERSION, [[6, 3]] * 3, DecodeOptions()))
        await asyncio.sleep(0.01)
        assert admit.queued_sentences == 3
        with pytest.raises(QueueFullError, match="3 of 4"):
            await admit.translate(VERSION, [[7, 3]] * 2, DecodeOptions())
        engines.released.set()
        await waiting
        assert admit.queued_sentences == 0
        await admit.translate(VERSION, [[7, 3]] * 2, DecodeOptions())

    run(scenario())


def test_an_engine_error_reaches_the_request_as_its_error():
    async def scenario():
        admit = admission(Engines(fail=RuntimeError("the decoder step failed")))
        with pytest.raises(RuntimeError, match="decoder step failed"):
            await admit.translate(VERSION, [[5, 3], [6, 3]], DecodeOptions())
        await admit.close()

    run(scenario())


def test_close_waits_until_every_submitted_sentence_is_settled():
    async def scenario():
        engines = Engines(hold=True)
        admit = admission(engines)
        call = asyncio.ensure_future(admit.translate(VERSION, [[5, 3]], DecodeOptions()))
        await asyncio.sleep(0.01)
        call.cancel()
        closing = asyncio.ensure_future(admit.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        engines.released.set()
        await closing
        return engines

    assert run(scenario()).answered == 1
