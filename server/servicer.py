"""The rosetta.v1.Translator gRPC service over the model registry and the batcher.

Every error a caller can cause is answered with a status code and a message they can act on
(see protos/rosetta/v1/translator.proto), a message that is not valid protobuf included;
anything else is a bug, logged with its traceback and answered INTERNAL without taking the
server down. No stream outlives its client, a malformed message, or the server's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc

from model.search import DEFAULT_BEAM_SIZE, DecodeOptions, Hypothesis
from model.tokenizer import SourceTooLongError
from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc
from server import sentences
from server.batcher import Batcher, DeadlineExpiredError, QueueFullError, RequestTooLargeError
from server.config import ServerConfig
from server.malformed import MalformedMessageError
from server.metrics import Metrics
from server.registry import (ModelNotFoundError, ModelRegistry, VersionEntry, VersionRejectedError, VersionState,
                             VersionUnavailableError)
from server.runtime import LoadedVersion

log = logging.getLogger("rosetta.servicer")


class RequestError(Exception):
    """A request the server refuses, with the status code to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# Errors of the layers below that a caller can act on, and the status each is answered with.
REFUSALS: dict[type[Exception], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    VersionRejectedError: grpc.StatusCode.FAILED_PRECONDITION,
    VersionUnavailableError: grpc.StatusCode.UNAVAILABLE,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def refusal(error: Exception) -> RequestError | None:
    """The answer to an error a caller can act on; None for a bug."""
    if isinstance(error, RequestError):
        return error
    code = REFUSALS.get(type(error))
    return None if code is None else RequestError(code, str(error))


def decode_options(options: pb.DecodingOptions) -> DecodeOptions:
    """The request's options with the documented defaults, or INVALID_ARGUMENT."""
    try:
        return DecodeOptions(
            beam_size=options.beam_size or DEFAULT_BEAM_SIZE,
            length_penalty=options.length_penalty if options.HasField("length_penalty") else 1.0,
            min_length=options.min_length,
            max_length=options.max_length or None,
            n_best=options.n_best or 1,
        )
    except ValueError as e:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"options: {e}") from None


@dataclass
class _Text:
    segments: list[sentences.Segment]
    ids: list[list[int]]


class TranslatorServicer(translator_pb2_grpc.TranslatorServicer):
    def __init__(self, registry: ModelRegistry, batcher: Batcher, config: ServerConfig,
                 metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.batcher = batcher
        self.config = config
        self.metrics = metrics
        self._closing = asyncio.Event()

    # -- shared steps ----------------------------------------------------------------------
    async def _version(self, model: str, version: int) -> LoadedVersion:
        if not self.registry.ready:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no model is ready yet: the server is loading; retry shortly")
        return await self.registry.resolve(model, version)

    def _prepare(self, version: LoadedVersion, text: str, index: int | None = None) -> _Text:
        where = "" if index is None else f"text {index}: "
        if not text.strip():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}text is empty")
        if len(text) > self.config.max_text_chars:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{where}text has {len(text)} characters; the limit is {self.config.max_text_chars}")
        segments = sentences.split(text, version.manifest.source_lang)
        try:
            ids = version.translator.encode([s.sentence for s in segments])
        except SourceTooLongError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{where}sentence {e.index + 1} has {e.tokens} tokens; the model accepts at most "
                               f"{e.limit}: split it into shorter sentences") from None
        except ValueError as e:  # not valid Unicode
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{e}") from None
        return _Text(segments, ids)

    async def _decode(self, version: LoadedVersion, texts: list[_Text], options: DecodeOptions,
                      context: grpc.aio.ServicerContext) -> list[list[list[Hypothesis]]]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        ids = [sentence for text in texts for sentence in text.ids]
        hypotheses = await self.batcher.translate(version, ids, options, deadline)
        return sentences.split_by_lengths(hypotheses, [len(text.ids) for text in texts])

    def _response(self, version: LoadedVersion, text: _Text, per_sentence: list[list[Hypothesis]],
                  n_best: int) -> pb.TranslateResponse:
        decode = version.translator.tokenizer.decode
        hypotheses = []
        for rank in range(n_best):
            # Rank r of the text: each sentence's r-th hypothesis (its best where it has fewer).
            picks = [sentence[min(rank, len(sentence) - 1)] for sentence in per_sentence]
            hypotheses.append(pb.Hypothesis(text=sentences.join(text.segments, [decode(h.tokens) for h in picks]),
                                            score=sum(h.score for h in picks),
                                            tokens=sum(len(h.tokens) for h in picks)))
        return pb.TranslateResponse(translation=hypotheses[0].text, model=version.name, version=version.version,
                                    hypotheses=hypotheses, source_tokens=sum(map(len, text.ids)),
                                    sentences=len(text.ids))

    async def _translate(self, request: pb.TranslateRequest, context) -> pb.TranslateResponse:
        options = decode_options(request.options)
        version = await self._version(request.model, request.version)
        text = self._prepare(version, request.text)
        (per_sentence,) = await self._decode(version, [text], options, context)
        return self._response(version, text, per_sentence, options.n_best)

    # -- RPCs ------------------------------------------------------------------------------
    async def _observed(self, method: str, context, work: Callable[[], Awaitable]):
        """Run an RPC's work: refusals become their status code, bugs INTERNAL; metrics either way."""
        started, code = time.perf_counter(), "OK"
        try:
            return await work()
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as e:
            refused = refusal(e)
            if refused is None:
                log.exception("%s failed", method)
                refused = RequestError(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            code = refused.code.name
            await context.abort(refused.code, str(refused))
        finally:
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe_call(method, code, seconds)
            log.debug("%s %s %.1f ms", method, code, seconds * 1000,
                      extra={"event": "call", "method": method, "code": code, "ms": round(seconds * 1000, 1),
                             "peer": context.peer()})

    async def Translate(self, request: pb.TranslateRequest, context) -> pb.TranslateResponse:
        return await self._observed("Translate", context, lambda: self._translate(request, context))

    async def TranslateBatch(self, request: pb.TranslateBatchRequest, context) -> pb.TranslateBatchResponse:
        async def work() -> pb.TranslateBatchResponse:
            if not request.texts:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")
            if len(request.texts) > self.config.max_batch_texts:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{len(request.texts)} texts; the limit per call is {self.config.max_batch_texts}")
            options = decode_options(request.options)
            version = await self._version(request.model, request.version)
            texts = [self._prepare(version, t, i) for i, t in enumerate(request.texts)]
            decoded = await self._decode(version, texts, options, context)
            return pb.TranslateBatchResponse(translations=[
                self._response(version, text, per_sentence, options.n_best)
                for text, per_sentence in zip(texts, decoded)])

        return await self._observed("TranslateBatch", context, work)

    async def TranslateStream(self, request_iterator: AsyncIterator[pb.TranslateStreamRequest],
                              context) -> AsyncIterator[pb.TranslateStreamResponse]:
        """Items are translated concurrently and answered as each finishes. The stream ends early,
        after answering the items already read, on a malformed message (INVALID_ARGUMENT: it has no
        id to answer by) or at shutdown (UNAVAILABLE)."""
        results: asyncio.Queue[pb.TranslateStreamResponse | None] = asyncio.Queue()
        items: set[asyncio.Task] = set()
        ending: list[RequestError] = []

        async def one(item: pb.TranslateStreamRequest) -> None:
            try:
                response = await self._translate(item.request, context)
                await results.put(pb.TranslateStreamResponse(id=item.id, response=response))
            except Exception as e:  # this item fails, the stream goes on
                refused = refusal(e)
                if refused is None:
                    log.exception("translating a stream item failed")
                    refused = RequestError(grpc.StatusCode.INTERNAL, "internal error; see the server log")
                await results.put(pb.TranslateStreamResponse(id=item.id, error=pb.Error(
                    code=refused.code.value[0], message=str(refused))))

        async def read() -> None:
            try:
                async for item in _until(request_iterator, self._closing):
                    task = asyncio.create_task(one(item))
                    items.add(task)
                    task.add_done_callback(items.discard)
                if self._closing.is_set():
                    ending.append(RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: the items "
                                               "sent before were answered; send the others to another server"))
            except MalformedMessageError as e:  # server/malformed.py: no id to answer it by
                ending.append(RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{e}; the messages before it were answered"))
            except Exception:  # a bug: the stream ends, it never hangs
                log.exception("reading a stream failed")
                ending.append(RequestError(grpc.StatusCode.INTERNAL, "internal error; see the server log"))
            finally:
                if items:
                    await asyncio.gather(*list(items), return_exceptions=True)
                await results.put(None)

        reader = asyncio.create_task(read())
        started, code = time.perf_counter(), "OK"
        try:
            while (response := await results.get()) is not None:
                yield response
            if ending:
                code = ending[0].code.name
                await context.abort(ending[0].code, str(ending[0]))
        except (asyncio.CancelledError, GeneratorExit):  # the call ended first (gRPC closes the generator)
            code = "CANCELLED"
            raise
        finally:
            reader.cancel()
            for task in list(items):
                task.cancel()
            if self.metrics is not None:
                self.metrics.observe_call("TranslateStream", code, time.perf_counter() - started)

    def close(self) -> None:
        """Shutdown: open streams stop reading, answer what they read, and end (UNAVAILABLE)."""
        self._closing.set()

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return await self._observed("ListModels", context, self._list_models)

    async def _list_models(self) -> pb.ListModelsResponse:
        default_model = self.registry.default_model
        models = []
        for name, number, entry in self.registry.listing():
            v, loaded = entry.loaded, {}
            if v is not None:
                loaded = dict(source_lang=v.manifest.source_lang, target_lang=v.manifest.target_lang,
                              precision=v.manifest.precision, execution_provider=v.translator.provider,
                              loaded_at=v.loaded_at, parity_summary=v.parity_summary)
            models.append(pb.ModelInfo(name=name, version=number, default_model=name == default_model,
                                       default_version=entry.state is VersionState.SERVING,
                                       version_state=STATES[entry.state], reason=entry.reason,
                                       state=legacy_state(entry), **loaded))
        return pb.ListModelsResponse(models=models)


STATES = {state: pb.VersionState.Value(f"VERSION_STATE_{state.name}") for state in VersionState}


def legacy_state(entry: VersionEntry) -> str:
    """ModelInfo.state, for clients older than version_state."""
    if entry.state is VersionState.REJECTED:
        return f"REJECTED: {entry.reason}"
    return "SERVING" if entry.loaded is not None else entry.state.name


async def _until(iterator: AsyncIterator, stop: asyncio.Event) -> AsyncIterator:
    """The items of `iterator` until it ends or `stop` is set, whichever comes first."""
    source, end = aiter(iterator), object()

    async def following():
        return await anext(source, end)

    stopping, item = asyncio.ensure_future(stop.wait()), None
    try:
        while True:
            item = asyncio.ensure_future(following())
            await asyncio.wait({item, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done() or item.result() is end:
                return
            yield item.result()
    finally:
        stopping.cancel()
        if item is not None:
            item.cancel()
