"""The rosetta.v1.Translator gRPC service over the model registry and admission into the engines.

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

import grpc

from model.search import DEFAULT_BEAM_SIZE, DecodeOptions
from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc
from server.admission import Admission, DeadlineExpiredError, QueueFullError, RequestTooLargeError
from server.config import ServerConfig
from server.malformed import MalformedMessageError
from server.metrics import Metrics
from server.registry import (ModelNotFoundError, ModelRegistry, VersionEntry, VersionRejectedError, VersionState,
                             VersionUnavailableError)
from server.runtime import (Format, JobRounds, LoadedVersion, TextJob, TextOptions, TextTranslation,
                            decoding_options)

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


FORMATS = {pb.TEXT_FORMAT_UNSPECIFIED: Format.PLAIN, pb.TEXT_FORMAT_PLAIN: Format.PLAIN,
           pb.TEXT_FORMAT_HTML: Format.HTML, pb.TEXT_FORMAT_XML: Format.XML}
MAX_TERMS = 256  # glossary terms, and keep strings, per request
MAX_TERM_CHARS = 200


def text_options(request: pb.TranslateRequest | pb.TranslateBatchRequest) -> TextOptions:
    """The request's format, glossary and keep list, or INVALID_ARGUMENT."""
    if request.format not in FORMATS:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"format {request.format} is unknown: use "
                           "TEXT_FORMAT_PLAIN, TEXT_FORMAT_HTML or TEXT_FORMAT_XML")
    for name, count in (("glossary", len(request.glossary)), ("keep", len(request.keep))):
        if count > MAX_TERMS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} has {count} entries; the limit is {MAX_TERMS}")
    entries = [(f"glossary[{i}].{side}", getattr(term, side)) for i, term in enumerate(request.glossary)
               for side in ("source", "target")] + [(f"keep[{i}]", text) for i, text in enumerate(request.keep)]
    for where, text in entries:
        if not text.strip() or len(text) > MAX_TERM_CHARS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} has {len(text)} characters; each entry "
                               f"must hold 1 to {MAX_TERM_CHARS}, not only spaces")
    return TextOptions(format=FORMATS[request.format],
                       glossary=tuple((term.source, term.target) for term in request.glossary),
                       keep=tuple(request.keep))


class TranslatorServicer(translator_pb2_grpc.TranslatorServicer):
    def __init__(self, registry: ModelRegistry, admission: Admission, config: ServerConfig,
                 metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.admission = admission
        self.config = config
        self.metrics = metrics
        self._closing = asyncio.Event()

    # -- shared steps ----------------------------------------------------------------------
    async def _version(self, model: str, version: int) -> LoadedVersion:
        if not self.registry.ready:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no model is ready yet: the server is loading; retry shortly")
        return await self.registry.resolve(model, version)

    def _job(self, version: LoadedVersion, text: str, options: TextOptions, decoding: DecodeOptions,
             index: int | None = None) -> TextJob:
        where = "" if index is None else f"text {index}: "
        if not text.strip():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}text is empty")
        if len(text) > self.config.max_text_chars:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{where}text has {len(text)} characters; the limit is {self.config.max_text_chars}")
        try:
            return version.translator.text_job(text, options=options, n_best=decoding.n_best,
                                               length_penalty=decoding.length_penalty)
        except ValueError as e:  # not valid Unicode
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{e}") from None

    async def _run(self, version: LoadedVersion, jobs: list[TextJob], options: DecodeOptions,
                   context: grpc.aio.ServicerContext) -> list[TextTranslation]:
        """The jobs' rounds through admission: usually one, two where a sentence needs repair."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        rounds, decoding = JobRounds(jobs), decoding_options(options)
        while ids := rounds.wanted():
            rounds.answer(await self.admission.translate(version, ids, decoding, deadline))
        return rounds.results()

    @staticmethod
    def _response(version: LoadedVersion, result: TextTranslation) -> pb.TranslateResponse:
        report = result.report
        return pb.TranslateResponse(
            translation=result.texts[0], model=version.name, version=version.version,
            hypotheses=[pb.Hypothesis(text=t, score=s, tokens=n)
                        for t, s, n in zip(result.texts, result.scores, result.tokens)],
            source_tokens=result.source_tokens, sentences=result.sentences,
            report=pb.TextReport(protected=report.protected, tags=report.tags,
                                 glossary_applied=[pb.GlossaryTerm(source=s, target=t) for s, t in report.glossary],
                                 repairs=report.repairs, confidence=report.confidence))

    async def _translate(self, request: pb.TranslateRequest, context) -> pb.TranslateResponse:
        options, text = decode_options(request.options), text_options(request)
        version = await self._version(request.model, request.version)
        (result,) = await self._run(version, [self._job(version, request.text, text, options)], options, context)
        return self._response(version, result)

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
            options, text = decode_options(request.options), text_options(request)
            version = await self._version(request.model, request.version)
            jobs = [self._job(version, t, text, options, i) for i, t in enumerate(request.texts)]
            results = await self._run(version, jobs, options, context)
            return pb.TranslateBatchResponse(translations=[self._response(version, r) for r in results])

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
