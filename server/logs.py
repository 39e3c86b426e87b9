"""The server's logs: one record per line on stderr, JSON for machines or text for people.

`--log-format auto` writes text to a terminal and JSON anywhere else (containers, systemd,
files), where log collectors parse each line into fields: time, level, logger, message, and
the record's extras (event, port, model, version, ...). At the default level, info, only
life-cycle events are logged (start, listen, serve, model loaded or rejected, shut down);
per-call lines are at debug. Tokens are never logged.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "text")


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route every logger (ONNX Runtime's and gRPC's Python loggers included) to stderr."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries stay at warning; our own loggers ("rosetta.*") follow --log-level.
    root.setLevel(logging.WARNING)
    logging.getLogger("rosetta").setLevel(level.upper())
