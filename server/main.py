"""`rosetta-serve`: the gRPC translation server (server/service.py).

    rosetta-serve --repository models --port 50051

Signals are taken before anything else: SIGTERM or SIGINT while the server's code is still being
imported stops it with exit 0 once it can, and SIGHUP then is only a look for new versions,
as at any later moment.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    early: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: early.add(number))
    # Imported after the handlers are in place: gRPC and ONNX Runtime take a moment to import.
    from server.service import run

    return run(argv, early)


if __name__ == "__main__":
    sys.exit(main())
