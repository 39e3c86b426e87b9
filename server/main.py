"""`rosetta-serve`: the gRPC translation server.

    rosetta-serve --repository models --port 50051

Start-up: health NOT_SERVING while the models load, SERVING once they are ready. SIGTERM or
SIGINT: health NOT_SERVING, new calls refused, in-flight calls get `grace_seconds` to finish,
then exit 0. New versions exported into the repository are found, gated and swapped in while
serving (server/reloader.py); SIGHUP looks at once. Besides rosetta.v1.Translator it runs grpc.health.v1.Health and server
reflection, so generic tools (grpcurl, grpc_health_probe) work without the .proto.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api import translator_pb2, translator_pb2_grpc
from server.auth import BearerTokenInterceptor
from server.batcher import Batcher
from server.config import ServerConfig, parse_config
from server.health import NOT_SERVING, SERVING, HealthServicer
from server.logs import configure
from server.metrics import Metrics
from server.registry import ModelRegistry, NoModelError
from server.reloader import Reloader
from server.servicer import TranslatorServicer
from server.sessions import DeviceUnavailableError, SessionConfig

log = logging.getLogger("rosetta.server")

SERVICE = translator_pb2.DESCRIPTOR.services_by_name["Translator"].full_name


def credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    return grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])


async def serve(config: ServerConfig) -> int:
    token = config.token()
    server = grpc.aio.server(
        interceptors=[BearerTokenInterceptor(token)] if token else [],
        options=[("grpc.max_receive_message_length", config.max_message_bytes),
                 ("grpc.max_send_message_length", config.max_message_bytes)])
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        await health_servicer.set(name, NOT_SERVING)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    sessions = SessionConfig(device=config.device, streams=config.streams, intra_op_threads=config.threads,
                             concurrent_batches=config.concurrent_batches)
    registry = ModelRegistry(config.repository, sessions, config.default_model)
    batcher = Batcher(max_batch_sentences=config.max_batch_sentences, max_wait_ms=config.max_wait_ms,
                      max_queue_sentences=config.max_queue_sentences, workers=config.concurrent_batches)
    batcher.start()
    metrics = Metrics()
    batcher.on_batch.append(metrics.observe_batch)
    metrics.track_queue(lambda: batcher.queued_sentences)
    try:
        metrics_port = metrics.serve(config.host, config.metrics_port) if config.metrics_port >= 0 else None
    except OSError as e:
        log.error("cannot serve metrics on %s:%d (is the port in use?): %s", config.host, config.metrics_port, e)
        await batcher.close()
        return 1
    # Registered before the models load: until then, calls get UNAVAILABLE and health says NOT_SERVING.
    translator_pb2_grpc.add_TranslatorServicer_to_server(TranslatorServicer(registry, batcher, config, metrics), server)
    try:
        address = f"{config.host}:{config.port}"
        tls = credentials(config)
        port = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    except RuntimeError as e:
        log.error("cannot listen on %s:%d (is the port in use?): %s", config.host, config.port, e)
        await batcher.close()
        return 1
    await server.start()
    log.info("listening on %s:%d; loading models from %s", config.host, port, config.repository,
             extra={"event": "listening", "port": port, "metrics_port": metrics_port})
    try:
        await asyncio.get_running_loop().run_in_executor(None, registry.load)
    except (NoModelError, DeviceUnavailableError) as e:
        log.error("%s", e)
        await server.stop(0)
        await batcher.close()
        return 1
    def show_in_metrics(version, previous) -> None:
        if previous is not None:
            metrics.model_loaded.remove(previous.name, str(previous.version), previous.manifest.precision,
                                        previous.translator.provider)
        metrics.model_loaded.labels(version.name, str(version.version), version.manifest.precision,
                                    version.translator.provider).set(1)

    for v in registry.all():
        show_in_metrics(v, None)
    reloader = Reloader(registry, max_chrf_drop=config.max_chrf_drop, on_swap=show_in_metrics)
    wake = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, wake.set)
    reload_task = asyncio.create_task(reloader.run(config.reload_interval or None, wake))
    for name in ("", SERVICE):
        await health_servicer.set(name, SERVING)
    serving = {"event": "serving", "host": config.host, "port": port, "metrics_port": metrics_port,
               "tls": tls is not None, "auth": bool(token), "models": [f"{v.name}/{v.version}" for v in registry.all()]}
    log.info("serving %s on %s:%d", ", ".join(serving["models"]), config.host, port, extra=serving)
    # And one machine-readable line on stdout: scripts and tests read the port from it (useful with --port 0).
    print(json.dumps(serving), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: in-flight calls have %.1f s", config.grace_seconds, extra={"event": "shutting_down"})
    reload_task.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_seconds)
    await batcher.close()
    log.info("stopped", extra={"event": "stopped"})
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure(config.log_level, config.log_format)
    log.info("starting rosetta-serve: %s", config.describe(), extra={"event": "starting", "config": config.public()})
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
