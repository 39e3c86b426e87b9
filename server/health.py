"""The standard gRPC health service (grpc.health.v1.Health), ending its Watch streams at shutdown.

grpcio-health-checking's servicer keeps every Watch stream open until the server cancels it,
so one client watching health (any channel with client-side health checking does) holds a
graceful shutdown open for its whole grace period, and the forced cancellation then prints a
traceback. Here, entering shutdown sends NOT_SERVING to every watcher and ends its stream
cleanly, so shutdown waits only for real work.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Status per service name ("" is the whole server); Check answers it, Watch follows it."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            if not self._closing:
                self._status[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; watchers get that, then their streams end."""
        async with self._changed:
            self._closing = True
            self._status = dict.fromkeys(self._status, NOT_SERVING)
            self._changed.notify_all()

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        if request.service not in self._status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status[request.service])

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        sent = None
        while True:
            async with self._changed:
                # Re-read under the lock before waiting, so no change between two waits is missed.
                while self._status.get(request.service, SERVICE_UNKNOWN) == sent and not self._closing:
                    await self._changed.wait()
                status, closing = self._status.get(request.service, SERVICE_UNKNOWN), self._closing
            if status != sent:  # written outside the lock: a slow client never delays `set`
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if closing:
                return
