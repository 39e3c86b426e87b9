"""Hot reload: "retrain, re-export, reload" without a restart and without a failed request.

The reloader looks at the repository every `interval` seconds, and at once on SIGHUP, and lets
the registry advance each model (server/registry.py): a new version is loaded beside the one
serving, passes the whole gate (server/runtime/gate.py) before any user sees it, and is then swapped in
by one assignment. Requests already running keep their reference to the old version and finish
on it. A version that fails the gate is rejected (logged, shown by ListModels) and the previous
one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging

from server.registry import ModelRegistry

log = logging.getLogger("rosetta.reload")


async def reload_forever(registry: ModelRegistry, interval: float | None, wake: asyncio.Event) -> None:
    """Look for new versions every `interval` seconds (None: never by itself), and whenever `wake` is set."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), timeout=interval)
        except TimeoutError:
            pass
        wake.clear()
        try:
            await registry.refresh()
        except Exception:  # the repository itself unreadable (a version's failures are rejections): retry next time
            log.exception("looking at the model repository failed")
