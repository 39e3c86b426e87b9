"""A small typed Python client of rosetta.v1.Translator.

    with TranslatorClient("localhost:50051") as client:
        print(client.translate("Hello, world."))
        for hypothesis in client.translate_n_best("Hello, world.", n_best=3):
            print(hypothesis.score, hypothesis.text)

        result = client.translate_with_report('Click <b>Save</b> to keep %s.', format="html",
                                              glossary={"save": "guardar"})
        print(result.translation, result.report.protected, result.report.glossary_applied)

Decoding options are keyword arguments of each call; unset ones take the server's defaults
(see protos/rosetta/v1/translator.proto), and so do the text options: `format` ("plain",
"html" or "xml"), `glossary` (source term -> required translation) and `keep` (strings never
translated). Errors raise TranslationError with the gRPC status.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc


class TranslationError(Exception):
    """The server refused or failed a call."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class Hypothesis:
    text: str
    score: float
    tokens: int


@dataclass(frozen=True)
class TextReport:
    """What the server kept, placed, applied and repaired in one text (see the .proto)."""

    protected: list[str]
    tags: int
    glossary_applied: list[tuple[str, str]]
    repairs: list[str]
    confidence: list[float]  # per sentence, 0..1


@dataclass(frozen=True)
class Result:
    """One text's translations, best first, and its report."""

    hypotheses: list[Hypothesis]
    report: TextReport

    @property
    def translation(self) -> str:
        return self.hypotheses[0].text


FORMATS = {"plain": pb.TEXT_FORMAT_PLAIN, "html": pb.TEXT_FORMAT_HTML, "xml": pb.TEXT_FORMAT_XML}


def text_fields(format: str = "plain", glossary: Mapping[str, str] | None = None,
                keep: Sequence[str] | None = None) -> dict[str, Any]:
    """The request fields of the text options."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    return dict(format=FORMATS[format], keep=list(keep or ()),
                glossary=[pb.GlossaryTerm(source=s, target=t) for s, t in (glossary or {}).items()])


@dataclass(frozen=True)
class StreamResult:
    """One text's outcome in `translate_stream`: its hypotheses, best first, or why it failed."""

    index: int  # position of the text in what was sent
    hypotheses: list[Hypothesis]
    error: TranslationError | None

    @property
    def translation(self) -> str:
        if self.error is not None:
            raise self.error
        return self.hypotheses[0].text


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    source_lang: str
    target_lang: str
    precision: str
    execution_provider: str
    state: str  # SERVING, STANDBY, AVAILABLE, LOADING or REJECTED (docs/lifecycle.md)
    reason: str  # why it is in that state
    default_version: bool  # what calls that pin no version get


class TranslatorClient:
    """A channel to one server; close it (or use `with`) when done."""

    def __init__(self, target: str = "localhost:50051", *, token: str | None = None,
                 root_certificates: bytes | None = None, timeout: float = 60.0) -> None:
        """target: host:port. token: bearer token, for servers that require one.
        root_certificates: PEM CA certificates to use TLS (None: plain text). timeout: seconds per call."""
        if root_certificates is not None:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = translator_pb2_grpc.TranslatorStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = timeout

    def __enter__(self) -> TranslatorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise TranslationError(e.code(), e.details()) from None

    @staticmethod
    def _options(beam_size: int | None, length_penalty: float | None, min_length: int | None,
                 max_length: int | None, n_best: int | None) -> pb.DecodingOptions:
        options = pb.DecodingOptions(beam_size=beam_size or 0, min_length=min_length or 0,
                                     max_length=max_length or 0, n_best=n_best or 0)
        if length_penalty is not None:
            options.length_penalty = length_penalty
        return options

    def translate_with_report(self, text: str, *, model: str = "", version: int = 0, beam_size: int | None = None,
                              length_penalty: float | None = None, min_length: int | None = None,
                              max_length: int | None = None, n_best: int | None = None, format: str = "plain",
                              glossary: Mapping[str, str] | None = None,
                              keep: Sequence[str] | None = None) -> Result:
        """The n best translations of `text` and the server's report on it (options: see the .proto)."""
        response = self._call(self._stub.Translate, pb.TranslateRequest(
            text=text, model=model, version=version,
            options=self._options(beam_size, length_penalty, min_length, max_length, n_best),
            **text_fields(format, glossary, keep)))
        return _result(response)

    def translate_n_best(self, text: str, **options) -> list[Hypothesis]:
        """The n best translations of `text`, best first; options as in `translate_with_report`."""
        return self.translate_with_report(text, **options).hypotheses

    def translate(self, text: str, **options) -> str:
        """The best translation of `text`; options as in `translate_n_best`."""
        return self.translate_n_best(text, **options)[0].text

    def translate_batch_n_best(self, texts: Sequence[str], *, model: str = "", version: int = 0,
                               beam_size: int | None = None, length_penalty: float | None = None,
                               min_length: int | None = None, max_length: int | None = None,
                               n_best: int | None = None, format: str = "plain",
                               glossary: Mapping[str, str] | None = None,
                               keep: Sequence[str] | None = None) -> list[list[Hypothesis]]:
        """The n best translations of each text, best first, in order, in one call."""
        response = self._call(self._stub.TranslateBatch, pb.TranslateBatchRequest(
            texts=list(texts), model=model, version=version,
            options=self._options(beam_size, length_penalty, min_length, max_length, n_best),
            **text_fields(format, glossary, keep)))
        return [_hypotheses(r) for r in response.translations]

    def translate_batch(self, texts: Sequence[str], **options) -> list[str]:
        """The best translation of each text, in order, in one call; options as in `translate_batch_n_best`."""
        return [hypotheses[0].text for hypotheses in self.translate_batch_n_best(texts, **options)]

    def translate_stream(self, texts: Iterable[str], *, model: str = "", version: int = 0,
                         beam_size: int | None = None, length_penalty: float | None = None,
                         min_length: int | None = None, max_length: int | None = None,
                         n_best: int | None = None, format: str = "plain", glossary: Mapping[str, str] | None = None,
                         keep: Sequence[str] | None = None) -> Iterator[StreamResult]:
        """Send texts as they come (any iterable, also a generator) over one TranslateStream call,
        and get each result as soon as it is done, not necessarily in order: `index` is the text's
        position in `texts`. A text the server refuses yields a result with its error; a failure
        of the whole stream raises TranslationError."""
        options = self._options(beam_size, length_penalty, min_length, max_length, n_best)
        fields = text_fields(format, glossary, keep)
        requests = (pb.TranslateStreamRequest(id=str(i), request=pb.TranslateRequest(
            text=text, model=model, version=version, options=options, **fields)) for i, text in enumerate(texts))
        try:
            for answer in self._stub.TranslateStream(requests, timeout=self.timeout, metadata=self._metadata):
                if answer.HasField("error"):
                    error = TranslationError(_status(answer.error.code), answer.error.message)
                    yield StreamResult(int(answer.id), [], error)
                else:
                    yield StreamResult(int(answer.id), _hypotheses(answer.response), None)
        except grpc.RpcError as e:
            raise TranslationError(e.code(), e.details()) from None

    def models(self) -> list[ModelInfo]:
        """Every version of every model the server knows, with its state."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [ModelInfo(m.name, m.version, m.source_lang, m.target_lang, m.precision, m.execution_provider,
                          pb.VersionState.Name(m.version_state).removeprefix("VERSION_STATE_"), m.reason,
                          m.default_version)
                for m in response.models]


def _hypotheses(response: pb.TranslateResponse) -> list[Hypothesis]:
    return [Hypothesis(h.text, h.score, h.tokens) for h in response.hypotheses]


def _result(response: pb.TranslateResponse) -> Result:
    r = response.report
    return Result(_hypotheses(response), TextReport(
        list(r.protected), r.tags, [(t.source, t.target) for t in r.glossary_applied], list(r.repairs),
        [round(c, 4) for c in r.confidence]))


def _status(code: int) -> grpc.StatusCode:
    return next(s for s in grpc.StatusCode if s.value[0] == code)
