"""Dynamic batching: concurrent requests decoded together, off the event loop.

Requests (each a list of encoded sentences with one model version and one set of decoding
options) wait in a bounded queue. A dispatcher takes the oldest, lets others arrive for up to
`max_wait_ms`, gathers the waiting requests that share its model version and options up to
`max_batch_sentences`, and decodes them as one batch in a worker thread (ONNX Runtime
releases the GIL while it computes, so the event loop keeps answering). Sentences are decoded
in length-sorted chunks; a sentence's translation never depends on its batch (the decoders
give every sentence its own budget and drop finished rows).

Before a batch starts, requests that were cancelled or whose deadline passed are dropped
from it: they cost no compute. Once it runs, the decode loop asks at every step whether each
sentence's request is still wanted, and drops the rows of those that are not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model.search import DecodeOptions, Hypothesis
from server.runtime import LoadedVersion

log = logging.getLogger("rosetta.batcher")


class QueueFullError(Exception):
    """The request does not fit in the queue now; it will once the queue drains."""


class RequestTooLargeError(ValueError):
    """The request has more sentences than the queue can ever hold."""


class DeadlineExpiredError(Exception):
    """The request's deadline passed before its batch started."""


@dataclass(eq=False)
class _Request:
    version: LoadedVersion
    ids: list[list[int]]
    options: DecodeOptions
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    queued_at: float = field(default_factory=time.monotonic)
    # Set on the event loop when the caller cancels; read by the decoding thread.
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.future.add_done_callback(lambda f: self.cancelled.set() if f.cancelled() else None)

    @property
    def key(self) -> tuple:
        return id(self.version), self.options

    @property
    def mean_length(self) -> float:
        return sum(map(len, self.ids)) / len(self.ids)

    def abandoned(self) -> bool:
        """Nobody will read this request's answer: its caller cancelled or its deadline passed."""
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


@dataclass
class BatchStats:
    """What a finished batch did, for metrics."""

    sentences: int
    requests: int
    seconds: float
    generated_tokens: int
    abandoned_sentences: int  # dropped mid-decode because their request was cancelled or expired


# (version, encoded sentences, options, max_batch, abandoned(i)) -> hypotheses of each sentence
Decode = Callable[[LoadedVersion, list[list[int]], DecodeOptions, int, Callable[[int], bool]], list[list[Hypothesis]]]


def decode_with_runtime(version: LoadedVersion, ids: list[list[int]], options: DecodeOptions, max_batch: int,
                        abandoned: Callable[[int], bool]) -> list[list[Hypothesis]]:
    """The runtime's one batch entry point (server/runtime/decoding.py)."""
    return version.translator.translate_ids(ids, options, max_batch=max_batch, abandoned=abandoned)


class Batcher:
    """Gathers requests into batches and decodes them in worker threads.

    decode: how a batch is decoded; the runtime by default (tests pass their own to check the
    batching rules without models).
    """

    def __init__(self, *, max_batch_sentences: int = 64, max_wait_ms: float = 5.0, max_queue_sentences: int = 1024,
                 workers: int = 1, decode: Decode = decode_with_runtime) -> None:
        self.decode = decode
        self.max_batch_sentences = max_batch_sentences
        self.max_wait = max_wait_ms / 1000
        self.max_queue_sentences = max_queue_sentences
        self.workers = workers
        self._pending: list[_Request] = []
        self._queued_sentences = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.on_batch: list = []  # callables taking BatchStats

    @property
    def queued_sentences(self) -> int:
        return self._queued_sentences

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def close(self) -> None:
        """Stop taking batches; wait for the ones running."""
        if self._task is not None:
            self._task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def translate(self, version: LoadedVersion, ids: list[list[int]], options: DecodeOptions,
                        deadline: float | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for each sentence of `ids`.

        Raises RequestTooLargeError, QueueFullError or DeadlineExpiredError.
        """
        if len(ids) > self.max_queue_sentences:
            raise RequestTooLargeError(f"the request has {len(ids)} sentences and the server queues at most "
                                       f"{self.max_queue_sentences}: split it into smaller requests")
        if self._queued_sentences + len(ids) > self.max_queue_sentences:
            raise QueueFullError(f"the server's queue is full: {self._queued_sentences} of "
                                 f"{self.max_queue_sentences} sentences are waiting and the request has "
                                 f"{len(ids)}; retry later")
        request = _Request(version, ids, options, asyncio.get_running_loop().create_future(), deadline)
        self._pending.append(request)
        self._queued_sentences += len(ids)
        self._wakeup.set()
        return await request.future

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._pending:
                self._wakeup.clear()
                continue
            await self._slots.acquire()
            first = self._pending[0]
            if self._waiting_sentences(first.key) < self.max_batch_sentences:
                await asyncio.sleep(max(0.0, first.queued_at + self.max_wait - time.monotonic()))
            batch = self._take(first.key)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _waiting_sentences(self, key: tuple) -> int:
        return sum(len(r.ids) for r in self._pending if r.key == key)

    def _take(self, key: tuple) -> list[_Request]:
        """Remove and return the live requests of one batch; settle the dead ones.

        The oldest request always goes (nobody starves); the others are those closest to it in
        sentence length, since a batch lasts as long as its longest sentence. The waiting
        sentences are shared among the decoding slots, so that a queue of 32 becomes two
        batches of 16 decoded side by side rather than one of 32 and an idle slot.
        """
        candidates = [r for r in self._pending if r.key == key]
        waiting = sum(len(r.ids) for r in candidates)
        share = min(self.max_batch_sentences, max(1, -(-waiting // self.workers)))
        first, rest = candidates[0], candidates[1:]
        rest.sort(key=lambda r: abs(r.mean_length - first.mean_length))
        batch, sentences, now = [], 0, time.monotonic()
        for request in [first, *rest]:
            if batch and sentences + len(request.ids) > share:
                continue
            self._pending.remove(request)
            self._queued_sentences -= len(request.ids)
            if request.future.done():  # cancelled by its caller
                continue
            if request.deadline is not None and now > request.deadline:
                request.future.set_exception(DeadlineExpiredError("the deadline passed while the request was queued"))
                continue
            batch.append(request)
            sentences += len(request.ids)
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._decode, batch)
        except Exception as e:  # a bug: every request of the batch learns of it, the server goes on
            log.exception("decoding a batch failed")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(e)
            return
        finally:
            self._slots.release()
        tokens = abandoned = 0
        for request, hypotheses in zip(batch, results):
            tokens += sum(len(h[0].tokens) for h in hypotheses if h)
            abandoned += sum(not h for h in hypotheses)
            if request.future.done():
                continue
            if any(not h for h in hypotheses):
                request.future.set_exception(DeadlineExpiredError("the deadline passed while the request was decoded"))
            else:
                request.future.set_result(hypotheses)
        stats = BatchStats(sum(len(r.ids) for r in batch), len(batch), time.monotonic() - started, tokens, abandoned)
        for callback in self.on_batch:
            callback(stats)

    def _decode(self, batch: list[_Request]) -> list[list[list[Hypothesis]]]:
        """In a worker thread: decode every sentence of the batch, results split back by request."""
        ids = [sentence for request in batch for sentence in request.ids]
        owner = [request for request in batch for _ in request.ids]
        out = self.decode(batch[0].version, ids, batch[0].options, self.max_batch_sentences,
                          lambda i: owner[i].abandoned())
        return split_by_lengths(out, [len(request.ids) for request in batch])


def split_by_lengths(items: Sequence[Any], lengths: Sequence[int]) -> list[list[Any]]:
    """`items` cut back into consecutive groups of the given lengths (sentences back into texts or
    requests after they were decoded together)."""
    if sum(lengths) != len(items):
        raise ValueError(f"{len(items)} items cannot be split into groups of {sum(lengths)}")
    groups, start = [], 0
    for length in lengths:
        groups.append(list(items[start: start + length]))
        start += length
    return groups
