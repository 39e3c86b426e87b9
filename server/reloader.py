"""Hot reload: "retrain, re-export, reload" without a restart and without a failed request.

The reloader looks for new versions in the repository (every `reload_interval` seconds, and
at once on SIGHUP). A new version is loaded beside the one serving and must pass three gates
before any user sees it:

1. smoke: it translates a sentence without error;
2. probes: the export's probes (export/probes.py), replayed through this runtime, give the
   same tokens, greedy and beam 4 (it is the graph that was verified);
3. quality: on the version's held-out pairs, its chrF may not fall more than
   `max_chrf_drop` below the serving version's chrF on the same pairs.

Then the registry swaps to it in one assignment: requests already running keep their
reference to the old version and finish on it; the old version is freed after its last
request. A version that fails a gate is rejected (logged, shown by ListModels) and the
previous one keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from model.scoring import score_translations
from server.registry import LoadedVersion, ModelRegistry, RejectedVersion
from server.probes import replay
from server.repository import ModelVersionError, versions

log = logging.getLogger("rosetta.reload")


class GateFailure(Exception):
    """A new version failed a pre-serving gate."""


def heldout_chrf(version: LoadedVersion, pairs: list[tuple[str, str]], beam_size: int) -> float:
    hypotheses = version.translator.translate([s for s, _ in pairs], beam_size=beam_size)
    return score_translations(hypotheses, [t for _, t in pairs])["chrf"]


def gate(candidate: LoadedVersion, serving: LoadedVersion | None, max_chrf_drop: float) -> str:
    """Run the three gates; returns a one-line summary, or raises GateFailure saying which failed."""
    probes_file = candidate.manifest.probes
    if not probes_file:
        raise GateFailure("the version has no probes (exported by an older rosetta-export?)")
    probes = json.loads((candidate.translator.graphs.dir / probes_file).read_text())
    smoke = candidate.translator.translate([probes["probes"][0]["source"]], beam_size=1)[0]
    if not smoke.strip():
        raise GateFailure("smoke translation came back empty")
    for name, beam in (("greedy", 1), ("beam4", 4)):
        tokens = replay(candidate.translator.graphs, [p["source_ids"] for p in probes["probes"]], beam)
        differing = [i for i, (a, p) in enumerate(zip(tokens, probes["probes"])) if a != p[name]]
        if differing:
            raise GateFailure(f"{name} probes differ from the export's at sentences {differing[:5]}")
    heldout = probes["heldout"]
    pairs = [tuple(p) for p in heldout["pairs"]]
    new_chrf = heldout_chrf(candidate, pairs, heldout["beam_size"])
    summary = f"probes identical; held-out chrF {new_chrf:.2f}"
    if serving is not None:
        old_chrf = heldout_chrf(serving, pairs, heldout["beam_size"])
        if new_chrf < old_chrf - max_chrf_drop:
            raise GateFailure(f"held-out chrF {new_chrf:.2f} is more than {max_chrf_drop} below the serving "
                              f"version {serving.version}'s {old_chrf:.2f}")
        summary += f" (serving version {serving.version}: {old_chrf:.2f})"
    return summary


class Reloader:
    """Finds, gates and swaps in new versions of the registry's models."""

    def __init__(self, registry: ModelRegistry, *, max_chrf_drop: float = 1.0,
                 on_swap: Callable[[LoadedVersion, LoadedVersion | None], None] | None = None) -> None:
        self.registry = registry
        self.max_chrf_drop = max_chrf_drop
        self.on_swap = on_swap
        self._lock = asyncio.Lock()

    def _candidates(self) -> list[tuple[str, int]]:
        rejected = {(r.name, r.version) for r in self.registry.rejected}
        found = []
        for model_dir in sorted(p for p in self.registry.repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            serving = self.registry.loaded.get(model_dir.name, {})
            newest = max(serving, default=0)
            found += [(model_dir.name, n) for n in versions(model_dir) if n > newest and (model_dir.name, n) not in rejected]
        return found

    def _try(self, name: str, number: int) -> LoadedVersion | None:
        """In a worker thread: load and gate one version. Returns it, or None after rejecting it."""
        serving = self.registry.loaded.get(name)
        current = serving[max(serving)] if serving else None
        try:
            candidate = self.registry.open(name, number)
            summary = gate(candidate, current, self.max_chrf_drop)
        except (ModelVersionError, GateFailure) as e:
            log.error("rejected %s version %d: %s", name, number, e,
                      extra={"event": "rejected", "model": name, "version": number, "reason": str(e)})
            self.registry.rejected.append(RejectedVersion(name, number, str(e)))
            return None
        log.info("accepted %s version %d: %s", name, number, summary,
                 extra={"event": "accepted", "model": name, "version": number})
        return candidate

    async def check(self) -> list[LoadedVersion]:
        """Look for new versions now; returns those swapped in."""
        async with self._lock:
            swapped = []
            loop = asyncio.get_running_loop()
            for name, number in await loop.run_in_executor(None, self._candidates):
                candidate = await loop.run_in_executor(None, self._try, name, number)
                if candidate is not None:
                    previous = self.registry.swap(candidate)
                    swapped.append(candidate)
                    if self.on_swap is not None:
                        self.on_swap(candidate, previous)
            return swapped

    async def run(self, interval: float | None, wake: asyncio.Event) -> None:
        """Check every `interval` seconds (None: never by itself), and whenever `wake` is set (SIGHUP)."""
        while True:
            try:
                await asyncio.wait_for(wake.wait(), timeout=interval)
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self.check()
            except Exception:  # the repository may be mid-change; the next check retries
                log.exception("checking the model repository failed")
