"""Admission: the service's requests into the runtime's engines, off the event loop.

Each sentence of a request goes to its model version's scheduler (server/runtime/engine.py),
which admits waiting sentences into the rows in flight at every decoder step: nothing waits
for a batch to form or to end, and requests with different options share steps.

What stays here, at the edge: queue limits (a request that can never fit, and one that must
wait, are told apart), deadlines (a request whose deadline passes is dropped from the queue
or from the rows in flight at the next step), cancellation (the same, when its caller goes),
and the admission order: a sentence's priority is its arrival time plus a delay proportional
to its expected work (`SECONDS_PER_TOKEN` x source tokens x beams) up to `MAX_DELAY`, so a
short request sent behind many long ones is admitted first, and a long one is passed only by
requests that arrived at most its delay later: nobody starves. The cap keeps the tail short:
without it a 60-token sentence at beam 4 could be passed by anything that arrived 2.4 s after
it, and at 32 clients the service's p99 latency was 2.0-2.5 s; with it, 1.5 s, at the same
throughput and the same head-of-line figure (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from model.search import DecodeOptions, Hypothesis
from server.runtime import LoadedVersion, Result, Scheduler, Sentence

# How much later a sentence may arrive and still be admitted before one with a token (x beam) more.
SECONDS_PER_TOKEN = 0.01
# The longest any sentence may be passed by later arrivals (seconds).
MAX_DELAY = 1.0


class QueueFullError(Exception):
    """The request does not fit in the queue now; it will once the queue drains."""


class RequestTooLargeError(ValueError):
    """The request has more sentences than the queue can ever hold."""


class DeadlineExpiredError(Exception):
    """The request's deadline passed before its translation was finished."""


@dataclass
class RequestStats:
    """What a finished request cost, for metrics."""

    sentences: int
    seconds: float  # from submission to the last sentence's result
    generated_tokens: int
    abandoned_sentences: int  # dropped mid-decode because their request was cancelled or expired


@dataclass(eq=False)
class _Request:
    ids: list[list[int]]
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    submitted: float = field(default_factory=time.monotonic)
    results: list[list[Hypothesis] | None] = field(default_factory=list)
    remaining: int = 0
    # Set on the event loop when the caller cancels; read by the decoding threads.
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.ids)
        self.remaining = len(self.ids)
        self.future.add_done_callback(lambda f: self.cancelled.set() if f.cancelled() else None)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def abandoned(self) -> bool:
        """Nobody will read this request's answer: its caller cancelled or its deadline passed."""
        return self.cancelled.is_set() or self.expired()

    def settle(self, sentence: int, result: Result) -> RequestStats | None:
        """On the event loop: one sentence's result. Returns the request's stats once it is complete."""
        self.results[sentence] = result if not isinstance(result, Exception) else []
        self.remaining -= 1
        if not self.future.done():
            if isinstance(result, Exception):
                self.future.set_exception(result)
            elif not result and self.expired():
                self.future.set_exception(DeadlineExpiredError("the deadline passed before the translation was done"))
        if self.remaining:
            return None
        if not self.future.done():
            self.future.set_result(self.results)
        done = [r for r in self.results if r]
        return RequestStats(len(self.ids), time.monotonic() - self.submitted, sum(len(r[0].tokens) for r in done),
                            len(self.ids) - len(done))


def version_scheduler(version: LoadedVersion) -> Scheduler:
    """The runtime's long-lived scheduler of a loaded version."""
    return version.translator.scheduler


class Admission:
    """Requests into the schedulers of their model versions, under the queue's limits.

    scheduler_for: a version's scheduler; the runtime's by default (tests pass their own to
    check the admission rules without models).
    """

    def __init__(self, *, max_queue_sentences: int = 1024,
                 scheduler_for: Callable[[LoadedVersion], Scheduler] = version_scheduler) -> None:
        self.max_queue_sentences = max_queue_sentences
        self.scheduler_for = scheduler_for
        self._schedulers: weakref.WeakSet = weakref.WeakSet()  # those used: the queue is theirs together
        self._open: set[_Request] = set()  # requests with sentences not yet settled
        self.on_request: list[Callable[[RequestStats], None]] = []  # e.g. metrics

    async def close(self) -> None:
        """Wait until every sentence submitted has been settled (those nobody waits for leave the
        engines at their next step), so that no decoding thread calls into a closed event loop."""
        while self._open:
            await asyncio.sleep(0.01)

    @property
    def queued_sentences(self) -> int:
        """Sentences submitted and not yet decoding."""
        return sum(scheduler.waiting for scheduler in list(self._schedulers))

    async def translate(self, version: LoadedVersion, ids: list[list[int]], options: DecodeOptions,
                        deadline: float | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for each sentence of `ids`.

        Raises RequestTooLargeError, QueueFullError or DeadlineExpiredError.
        """
        if len(ids) > self.max_queue_sentences:
            raise RequestTooLargeError(f"the request has {len(ids)} sentences and the server queues at most "
                                       f"{self.max_queue_sentences}: split it into smaller requests")
        queued = self.queued_sentences
        if queued + len(ids) > self.max_queue_sentences:
            raise QueueFullError(f"the server's queue is full: {queued} of {self.max_queue_sentences} sentences are "
                                 f"waiting and the request has {len(ids)}; retry later")
        loop = asyncio.get_running_loop()
        request = _Request(ids, loop.create_future(), deadline)
        if request.expired():
            raise DeadlineExpiredError("the deadline passed before the request was queued")

        def settle(sentence: int, result: Result) -> None:
            stats = request.settle(sentence, result)
            if stats is not None:
                self._open.discard(request)
                for callback in self.on_request:
                    callback(stats)

        scheduler = self.scheduler_for(version)
        self._schedulers.add(scheduler)
        self._open.add(request)
        scheduler.submit(
            Sentence(sentence, options, lambda result, i=i: loop.call_soon_threadsafe(settle, i, result),
                     request.abandoned, request.submitted + _delay(len(sentence), options.beam_size))
            for i, sentence in enumerate(ids))
        return await request.future


def _delay(source_tokens: int, beams: int) -> float:
    """How long after a sentence's arrival later ones may still be admitted before it."""
    return min(SECONDS_PER_TOKEN * source_tokens * beams, MAX_DELAY)
