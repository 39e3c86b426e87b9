from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_FORMAT_UNSPECIFIED: _ClassVar[TextFormat]
    TEXT_FORMAT_PLAIN: _ClassVar[TextFormat]
    TEXT_FORMAT_HTML: _ClassVar[TextFormat]
    TEXT_FORMAT_XML: _ClassVar[TextFormat]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_AVAILABLE: _ClassVar[VersionState]
    VERSION_STATE_LOADING: _ClassVar[VersionState]
    VERSION_STATE_SERVING: _ClassVar[VersionState]
    VERSION_STATE_STANDBY: _ClassVar[VersionState]
    VERSION_STATE_REJECTED: _ClassVar[VersionState]
TEXT_FORMAT_UNSPECIFIED: TextFormat
TEXT_FORMAT_PLAIN: TextFormat
TEXT_FORMAT_HTML: TextFormat
TEXT_FORMAT_XML: TextFormat
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_AVAILABLE: VersionState
VERSION_STATE_LOADING: VersionState
VERSION_STATE_SERVING: VersionState
VERSION_STATE_STANDBY: VersionState
VERSION_STATE_REJECTED: VersionState

class DecodingOptions(_message.Message):
    __slots__ = ("beam_size", "length_penalty", "min_length", "max_length", "n_best")
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    N_BEST_FIELD_NUMBER: _ClassVar[int]
    beam_size: int
    length_penalty: float
    min_length: int
    max_length: int
    n_best: int
    def __init__(self, beam_size: _Optional[int] = ..., length_penalty: _Optional[float] = ..., min_length: _Optional[int] = ..., max_length: _Optional[int] = ..., n_best: _Optional[int] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("text", "model", "version", "options", "format", "glossary", "keep")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    text: str
    model: str
    version: int
    options: DecodingOptions
    format: TextFormat
    glossary: _containers.RepeatedCompositeFieldContainer[GlossaryTerm]
    keep: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., options: _Optional[_Union[DecodingOptions, _Mapping]] = ..., format: _Optional[_Union[TextFormat, str]] = ..., glossary: _Optional[_Iterable[_Union[GlossaryTerm, _Mapping]]] = ..., keep: _Optional[_Iterable[str]] = ...) -> None: ...

class GlossaryTerm(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class TextReport(_message.Message):
    __slots__ = ("protected", "tags", "glossary_applied", "repairs", "confidence")
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_APPLIED_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    protected: _containers.RepeatedScalarFieldContainer[str]
    tags: int
    glossary_applied: _containers.RepeatedCompositeFieldContainer[GlossaryTerm]
    repairs: _containers.RepeatedScalarFieldContainer[str]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, protected: _Optional[_Iterable[str]] = ..., tags: _Optional[int] = ..., glossary_applied: _Optional[_Iterable[_Union[GlossaryTerm, _Mapping]]] = ..., repairs: _Optional[_Iterable[str]] = ..., confidence: _Optional[_Iterable[float]] = ...) -> None: ...

class Hypothesis(_message.Message):
    __slots__ = ("text", "score", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    score: float
    tokens: int
    def __init__(self, text: _Optional[str] = ..., score: _Optional[float] = ..., tokens: _Optional[int] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("translation", "model", "version", "hypotheses", "source_tokens", "sentences", "report")
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    translation: str
    model: str
    version: int
    hypotheses: _containers.RepeatedCompositeFieldContainer[Hypothesis]
    source_tokens: int
    sentences: int
    report: TextReport
    def __init__(self, translation: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., hypotheses: _Optional[_Iterable[_Union[Hypothesis, _Mapping]]] = ..., source_tokens: _Optional[int] = ..., sentences: _Optional[int] = ..., report: _Optional[_Union[TextReport, _Mapping]] = ...) -> None: ...

class TranslateBatchRequest(_message.Message):
    __slots__ = ("texts", "model", "version", "options", "format", "glossary", "keep")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    version: int
    options: DecodingOptions
    format: TextFormat
    glossary: _containers.RepeatedCompositeFieldContainer[GlossaryTerm]
    keep: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., options: _Optional[_Union[DecodingOptions, _Mapping]] = ..., format: _Optional[_Union[TextFormat, str]] = ..., glossary: _Optional[_Iterable[_Union[GlossaryTerm, _Mapping]]] = ..., keep: _Optional[_Iterable[str]] = ...) -> None: ...

class TranslateBatchResponse(_message.Message):
    __slots__ = ("translations",)
    TRANSLATIONS_FIELD_NUMBER: _ClassVar[int]
    translations: _containers.RepeatedCompositeFieldContainer[TranslateResponse]
    def __init__(self, translations: _Optional[_Iterable[_Union[TranslateResponse, _Mapping]]] = ...) -> None: ...

class TranslateStreamRequest(_message.Message):
    __slots__ = ("id", "request")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: TranslateRequest
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[TranslateRequest, _Mapping]] = ...) -> None: ...

class TranslateStreamResponse(_message.Message):
    __slots__ = ("id", "response", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    response: TranslateResponse
    error: Error
    def __init__(self, id: _Optional[str] = ..., response: _Optional[_Union[TranslateResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "source_lang", "target_lang", "precision", "execution_provider", "default_version", "default_model", "loaded_at", "parity_summary", "state", "version_state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LANG_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANG_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    PARITY_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    source_lang: str
    target_lang: str
    precision: str
    execution_provider: str
    default_version: bool
    default_model: bool
    loaded_at: str
    parity_summary: str
    state: str
    version_state: VersionState
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., source_lang: _Optional[str] = ..., target_lang: _Optional[str] = ..., precision: _Optional[str] = ..., execution_provider: _Optional[str] = ..., default_version: _Optional[bool] = ..., default_model: _Optional[bool] = ..., loaded_at: _Optional[str] = ..., parity_summary: _Optional[str] = ..., state: _Optional[str] = ..., version_state: _Optional[_Union[VersionState, str]] = ..., reason: _Optional[str] = ...) -> None: ...
