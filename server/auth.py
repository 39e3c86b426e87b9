"""Bearer-token authentication, as a server interceptor.

With a token configured, every call must carry `authorization: Bearer <token>` metadata or is
answered UNAUTHENTICATED. Health checks and reflection stay open, so load balancers and
generic tools work without the token. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty token would let every caller in")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(OPEN_SERVICES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                return hmac.compare_digest(value.encode() if isinstance(value, str) else value, self._expected)
        return False

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or self._authorized(details):
            return handler

        async def deny(request_or_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "this server requires 'authorization: Bearer <token>' metadata")

        if handler.request_streaming and handler.response_streaming:
            async def deny_stream(request_iterator, context):
                await deny(request_iterator, context)
                yield  # pragma: no cover - never reached: abort raises
            return grpc.stream_stream_rpc_method_handler(deny_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
        if handler.response_streaming:
            async def deny_unary_stream(request, context):
                await deny(request, context)
                yield  # pragma: no cover - never reached: abort raises
            return grpc.unary_stream_rpc_method_handler(deny_unary_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
