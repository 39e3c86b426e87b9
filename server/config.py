"""The server's configuration: one typed dataclass, from CLI flags and ROSETTA_* environment variables.

Precedence: a flag given on the command line, then its environment variable, then the default.
Every setting is printed at start-up (`describe`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from server.logs import FORMATS, LEVELS
from server.runtime import SessionConfig


def setting(default, description: str):
    """A setting: its default and its --help text; its flag and ROSETTA_* variable follow from its name."""
    return field(default=default, metadata={"help": description})


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of `rosetta-serve`, the one place each is defined."""

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0: all)")
    port: int = setting(50051, "gRPC port (0: a free one, printed at start-up)")
    repository: Path = setting(Path("models"), "model repository: <repository>/<name>/<version>/")
    default_model: str = setting(
        "", "model for requests that name none (default: en-es if present, else the first by name)")
    device: str = setting("auto", "auto (CUDA when usable, else CPU), cuda or cpu")
    streams: int = setting(
        0, "engines decoding at once, one thread each, each with its own rows in flight (0: one per core "
        "on the CPU, 1 on CUDA)")
    threads: int = setting(0, "intra-op threads per ONNX Runtime session (0: the cores left to each stream)")
    max_rows: int = setting(
        0, "rows (sentences x beams) decoding at once, shared among the streams; sentences join and leave "
        "at every step (0: 128 on the CPU, 4096 on CUDA)")
    cache: str = setting(
        "resizing", "resizing (the key/value cache follows the rows in flight) or static (allocated once at "
        "--max-rows, steps on fixed shapes, CUDA graphs on CUDA; not yet measured on a GPU)")
    max_queue_sentences: int = setting(1024, "sentences waiting at most; beyond, calls get RESOURCE_EXHAUSTED")
    max_text_chars: int = setting(10_000, "characters per text")
    max_batch_texts: int = setting(256, "texts per TranslateBatch call")
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest request or response message")
    grace_seconds: float = setting(10.0, "on SIGTERM/SIGINT, how long in-flight calls may finish")
    reload_interval: float = setting(10.0, "seconds between looks for new model versions (0: only on SIGHUP)")
    max_chrf_drop: float = setting(
        1.0, "reject a new version whose held-out chrF is more than this below the serving version's")
    metrics_port: int = setting(9464, 'Prometheus /metrics HTTP port (0: a free one, -1: off)')
    auth_token: str = setting("", "require 'authorization: Bearer <token>' on every call but health and reflection")
    auth_token_file: str = setting("", 'read the bearer token from this file')
    tls_cert: str = setting("", 'PEM certificate chain; with --tls-key, serve TLS')
    tls_key: str = setting("", 'PEM private key for --tls-cert')
    log_level: str = setting("info", 'debug (a line per call), info (life-cycle events), warning or error')
    log_format: str = setting("auto", 'json, text, or auto (text on a terminal, JSON elsewhere)')

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {self.device!r}")
        if self.cache not in ("resizing", "static"):
            raise ValueError(f"cache must be resizing or static, got {self.cache!r}")
        for name in ("max_queue_sentences", "max_text_chars",
                     "max_batch_texts", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if min(self.max_rows, self.grace_seconds, self.threads, self.streams, self.reload_interval,
               self.max_chrf_drop) < 0:
            raise ValueError("max_rows, grace_seconds, threads, streams, reload_interval and max_chrf_drop "
                             "must not be negative")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be -1 (off) or 0..65535, got {self.metrics_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.auth_token and self.auth_token_file:
            raise ValueError("give auth_token or auth_token_file, not both")
        if self.log_level not in LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LEVELS)}, got {self.log_level!r}")
        if self.log_format not in FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, got {self.log_format!r}")

    def session_config(self) -> SessionConfig:
        """How the runtime runs the graphs under these settings."""
        return SessionConfig(device=self.device, streams=self.streams, intra_op_threads=self.threads,
                             max_rows=self.max_rows, static_cache=self.cache == "static")

    def token(self) -> str:
        """The bearer token required of callers; empty when authentication is off."""
        if self.auth_token_file:
            return Path(self.auth_token_file).read_text().strip()
        return self.auth_token

    def public(self) -> dict[str, str | int | float]:
        """Every setting, for the start-up log; the token itself is never shown."""
        return {f.name: "<set>" if f.name == "auth_token" and self.auth_token else
                str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}

    def describe(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.public().items())




def env_name(field_name: str) -> str:
    return f"ROSETTA_{field_name.upper()}"


def parse_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="rosetta-serve", description="Serve translation models over gRPC.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        kind = type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                            help=f"{f.metadata['help']} [env {env_name(f.name)}; default {getattr(defaults, f.name)}]")
    args = parser.parse_args(argv)
    values = {}
    for f in fields(ServerConfig):
        kind = type(getattr(defaults, f.name))
        flag = getattr(args, f.name)
        if flag is not None:
            values[f.name] = flag
        elif env_name(f.name) in environ:
            try:
                values[f.name] = kind(environ[env_name(f.name)])
            except ValueError:
                parser.error(f"{env_name(f.name)}={environ[env_name(f.name)]!r} is not a valid {kind.__name__}")
    try:
        return ServerConfig(**values)
    except ValueError as e:
        parser.error(str(e))
