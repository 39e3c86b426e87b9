"""SIGINT/SIGTERM as a request to stop, so a run saves a checkpoint before it exits."""

from __future__ import annotations

import signal
from types import FrameType


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the run saves and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
