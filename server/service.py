"""The gRPC translation server: assembled, started, served and stopped (`rosetta-serve`, server/main.py).

Start-up: health NOT_SERVING while every model's versions pass the gate (server/registry.py),
SERVING once each model serves one. New versions exported into the repository are found,
gated and swapped in while serving (server/reloader.py); SIGHUP looks at once. SIGTERM or
SIGINT, at any moment (start-up included): health NOT_SERVING, new calls refused, open streams
end, in-flight calls get `grace_seconds` to finish, then exit 0. Besides rosetta.v1.Translator
it runs grpc.health.v1.Health and server reflection, so generic tools (grpcurl,
grpc_health_probe) work without the .proto.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rosetta.v1 import translator_pb2, translator_pb2_grpc
from server.auth import BearerTokenInterceptor
from server.admission import Admission
from server.config import ServerConfig, parse_config
from server.health import NOT_SERVING, SERVING, HealthServicer
from server.logs import configure
from server.malformed import MalformedMessageInterceptor
from server.metrics import Metrics
from server.registry import ModelRegistry, NoModelError
from server.reloader import reload_forever
from server.runtime import DeviceUnavailableError, Gate, LoadedVersion
from server.servicer import TranslatorServicer

log = logging.getLogger("rosetta.server")

SERVICE = translator_pb2.DESCRIPTOR.services_by_name["Translator"].full_name


class StartupError(Exception):
    """The server cannot start: the message says why."""


def credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    return grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])


def grpc_server(config: ServerConfig, servicer: TranslatorServicer, health_servicer: HealthServicer) -> grpc.aio.Server:
    token = config.token()
    # Authentication first: a caller without the token learns nothing, not even that its bytes were bad.
    server = grpc.aio.server(
        interceptors=[*([BearerTokenInterceptor(token)] if token else []), MalformedMessageInterceptor()],
        options=[("grpc.max_receive_message_length", config.max_message_bytes),
                 ("grpc.max_send_message_length", config.max_message_bytes)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    # Registered before the models load: until then, calls get UNAVAILABLE and health says NOT_SERVING.
    translator_pb2_grpc.add_TranslatorServicer_to_server(servicer, server)
    return server


def listen(server: grpc.aio.Server, config: ServerConfig) -> int:
    try:
        address, tls = f"{config.host}:{config.port}", credentials(config)
        return server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {config.host}:{config.port} (is the port in use?): {e}") from None


def serve_metrics(metrics: Metrics, config: ServerConfig) -> int | None:
    if config.metrics_port < 0:
        return None
    try:
        return metrics.serve(config.host, config.metrics_port)
    except OSError as e:
        raise StartupError(f"cannot serve metrics on {config.host}:{config.metrics_port} (is the port in use?): {e}") \
            from None


def track_models(metrics: Metrics, registry: ModelRegistry) -> None:
    def promoted(version: LoadedVersion, previous: LoadedVersion | None) -> None:
        if previous is not None:
            metrics.model_loaded.remove(previous.name, str(previous.version), previous.manifest.precision,
                                        previous.translator.provider)
        metrics.model_loaded.labels(version.name, str(version.version), version.manifest.precision,
                                    version.translator.provider).set(1)

    registry.on_promote.append(promoted)


async def until_stopped(work, stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` is set first; True when the work finished."""
    task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    await asyncio.gather(task, return_exceptions=True)  # the gate gives up at its next step
    return False


@dataclass
class Service:
    """What a running server holds, assembled before anything starts."""

    registry: ModelRegistry
    admission: Admission
    metrics: Metrics
    servicer: TranslatorServicer
    health: HealthServicer
    server: grpc.aio.Server

    @classmethod
    def assemble(cls, config: ServerConfig, stopping: threading.Event) -> Service:
        gate = Gate(config.session_config(), max_chrf_drop=config.max_chrf_drop, stopping=stopping)
        registry = ModelRegistry(config.repository, gate, config.default_model)
        admission = Admission(max_queue_sentences=config.max_queue_sentences)
        metrics = Metrics()
        admission.on_request.append(metrics.observe_request)
        metrics.track_queue(lambda: admission.queued_sentences)
        track_models(metrics, registry)
        servicer = TranslatorServicer(registry, admission, config, metrics)
        health_servicer = HealthServicer()
        return cls(registry, admission, metrics, servicer, health_servicer, grpc_server(config, servicer, health_servicer))

    async def set_health(self, status: int) -> None:
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def close(self, grace_seconds: float) -> None:
        """Health NOT_SERVING, open streams end, in-flight calls get `grace_seconds`, decoding settles."""
        self.servicer.close()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        await self.admission.close()


async def serve(config: ServerConfig, early_signals: set[int] = frozenset()) -> int:
    loop = asyncio.get_running_loop()
    stop, wake, stopping = asyncio.Event(), asyncio.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: (stop.set(), stopping.set()))
    loop.add_signal_handler(signal.SIGHUP, wake.set)  # during start-up too: the reloader looks once it runs
    if early_signals & {signal.SIGTERM, signal.SIGINT}:  # while the code was still importing
        log.info("stopped before start-up", extra={"event": "stopped"})
        return 0
    if signal.SIGHUP in early_signals:
        wake.set()
    service = Service.assemble(config, stopping)
    await service.set_health(NOT_SERVING)
    reloading: asyncio.Task | None = None
    try:
        metrics_port, port = serve_metrics(service.metrics, config), listen(service.server, config)
        await service.server.start()
        log.info("listening on %s:%d; loading models from %s", config.host, port, config.repository,
                 extra={"event": "listening", "port": port, "metrics_port": metrics_port})
        if not await until_stopped(service.registry.start(), stop):
            log.info("stopping during start-up", extra={"event": "shutting_down"})
            return 0
        reloading = asyncio.create_task(reload_forever(service.registry, config.reload_interval or None, wake))
        await service.set_health(SERVING)
        announce(config, service.registry, port, metrics_port)
        await stop.wait()
        log.info("shutting down: in-flight calls have %.1f s", config.grace_seconds, extra={"event": "shutting_down"})
        return 0
    except (StartupError, NoModelError, DeviceUnavailableError) as e:
        log.error("%s", e)
        return 1
    finally:
        stopping.set()
        if reloading is not None:
            reloading.cancel()
        await service.close(config.grace_seconds)
        log.info("stopped", extra={"event": "stopped"})


def announce(config: ServerConfig, registry: ModelRegistry, port: int, metrics_port: int | None) -> None:
    serving = {"event": "serving", "host": config.host, "port": port, "metrics_port": metrics_port,
               "tls": bool(config.tls_cert), "auth": bool(config.auth_token or config.auth_token_file),
               "models": [f"{v.name}/{v.version}" for v in registry.serving_versions()]}
    log.info("serving %s on %s:%d", ", ".join(serving["models"]), config.host, port, extra=serving)
    # And one machine-readable line on stdout: scripts and tests read the port from it (useful with --port 0).
    print(json.dumps(serving), flush=True)


def run(argv: list[str] | None, early_signals: set[int]) -> int:
    """Parse the settings and serve; `early_signals` arrived before the event loop took them over."""
    config = parse_config(argv)
    configure(config.log_level, config.log_format)
    log.info("starting rosetta-serve: %s", config.describe(), extra={"event": "starting", "config": config.public()})
    return asyncio.run(serve(config, early_signals))
