"""Malformed messages answered INVALID_ARGUMENT, by every service the server runs.

gRPC parses a request before the method sees it. Bytes that are not a valid message (garbage, a
truncated field, a string that is not UTF-8) make it answer UNKNOWN and log a traceback, and
inside a client stream they raise out of the method's request iterator. This interceptor has
requests parsed leniently instead: a malformed unary request is answered INVALID_ARGUMENT with
one quiet log line and never reaches the method; in a request stream the iterator raises
MalformedMessageError at the bad message, which a method may catch to answer what came before
it (TranslateStream does), and which otherwise ends the call with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger("rosetta.malformed")


class MalformedMessageError(Exception):
    """A message of a request stream could not be parsed."""


@dataclass(frozen=True)
class _Malformed:
    error: str  # protobuf's, which names the message type


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as e:
            return _Malformed(str(e))
    return parse


def _refusal(where: str, malformed: _Malformed, method: str) -> str:
    log.info("malformed message in %s: %s", method, malformed.error,
             extra={"event": "malformed_request", "method": method})
    return f"{where} is not a valid message ({malformed.error[:1].lower()}{malformed.error[1:]})"


async def _checked(requests: AsyncIterator, method: str) -> AsyncIterator:
    position = 0
    async for message in requests:
        position += 1
        if isinstance(message, _Malformed):
            raise MalformedMessageError(_refusal(f"message {position} of the stream", message, method))
        yield message


def _unary_request(behavior: Callable, method: str) -> Callable:
    async def refuse(request: _Malformed, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal("the request", request, method))

    if inspect.isasyncgenfunction(behavior):
        async def generator(request, context):
            if isinstance(request, _Malformed):
                await refuse(request, context)
            async for response in behavior(request, context):
                yield response
        return generator

    async def coroutine(request, context):
        if isinstance(request, _Malformed):
            await refuse(request, context)
        return await behavior(request, context)
    return coroutine


def _request_stream(behavior: Callable, method: str) -> Callable:
    if inspect.isasyncgenfunction(behavior):
        async def generator(requests, context):
            try:
                async for response in behavior(_checked(requests, method), context):
                    yield response
            except MalformedMessageError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return generator

    async def coroutine(requests, context):
        try:
            return await behavior(_checked(requests, method), context)
        except MalformedMessageError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return coroutine


class MalformedMessageInterceptor(grpc.aio.ServerInterceptor):
    """Every method of every service gets its requests parsed leniently (module docstring)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse, serialize = _lenient(handler.request_deserializer), handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_request_stream(handler.stream_stream, details.method),
                                                         parse, serialize)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_request_stream(handler.stream_unary, details.method),
                                                        parse, serialize)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_unary_request(handler.unary_stream, details.method),
                                                        parse, serialize)
        return grpc.unary_unary_rpc_method_handler(_unary_request(handler.unary_unary, details.method),
                                                   parse, serialize)
