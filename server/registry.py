"""The model versions a server knows, each in one state, and the one rule that promotes them.

Every version directory in the repository is in one state:

    AVAILABLE --checked--> LOADING --> STANDBY (passed the gate) or REJECTED (with the reason)
    STANDBY --advance--> SERVING --a newer version advances--> AVAILABLE (unloaded)

A version answers calls only after it passed the gate (server/runtime/gate.py) in this process.
Unpinned calls get the model's SERVING version. A pin of a version not loaded has it checked
first (concurrent pins share one check); a pin of a rejected version is refused with the
reason. Pinning never changes the SERVING version: only `advance` does.

`advance` is the one promotion rule, for start-up and hot reload alike: the versions newer than
the serving one, oldest first, each checked against the version serving at that moment; each
that passes serves from then on. At start-up nothing serves yet, so the whole history is
replayed, and a restarted server serves what the running server chose: a version rejected
then is rejected again, for the same reason, without anything written to the repository (it
may be mounted read-only). A version that cannot be checked at all is rejected, never retried
in a loop, and blocks no other. No torch, no gRPC here.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.runtime import Gate, GateFailure, GateInterrupted, LoadedVersion, versions

log = logging.getLogger("rosetta.registry")

CHECKED = "probes identical"  # the verdict of checks 1-4 (server/runtime/gate.py); a comparison may follow


class VersionState(enum.Enum):
    AVAILABLE = "available"  # in the repository, not checked (or unloaded since a newer version replaced it)
    LOADING = "loading"  # being loaded and checked
    SERVING = "serving"  # passed; what unpinned calls get
    STANDBY = "standby"  # passed and loaded; answers pins
    REJECTED = "rejected"  # failed the gate


@dataclass
class VersionEntry:
    state: VersionState = VersionState.AVAILABLE
    reason: str = ""
    loaded: LoadedVersion | None = None
    compared_with: int = 0  # the SERVING version its quality was compared against (0: none)


class ModelNotFoundError(LookupError):
    """No such model, or no such version of it."""


class VersionRejectedError(LookupError):
    """The pinned version failed the gate."""

    def __init__(self, name: str, version: int, reason: str) -> None:
        super().__init__(f"{name} version {version} was rejected by the server's gate: {reason}; "
                         "pin another version, or none")


class VersionUnavailableError(RuntimeError):
    """The pinned version could not be checked now (the server is stopping)."""


class NoModelError(RuntimeError):
    """The repository holds no servable model."""


class ModelRegistry:
    """Every version of every model in a repository, in its state; the SERVING one of each model."""

    def __init__(self, repository: Path, gate: Gate, default_model: str = "") -> None:
        self.repository = Path(repository)
        self.gate = gate
        self.requested_default = default_model
        self.models: dict[str, dict[int, VersionEntry]] = {}
        self.serving: dict[str, int] = {}  # model name -> its SERVING version
        self.on_promote: list[Callable[[LoadedVersion, LoadedVersion | None], None]] = []
        self._checks: dict[tuple[str, int], asyncio.Task] = {}
        self._advancing = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return bool(self.serving)

    @property
    def default_model(self) -> str:
        if self.requested_default:
            return self.requested_default
        return "en-es" if "en-es" in self.serving else min(self.serving, default="")

    def serving_versions(self) -> list[LoadedVersion]:
        return [self.models[name][number].loaded for name, number in sorted(self.serving.items())]

    def listing(self) -> list[tuple[str, int, VersionEntry]]:
        """Every known version: by model name, newest first."""
        return [(name, number, entry) for name in sorted(self.models)
                for number, entry in sorted(self.models[name].items(), reverse=True)]

    # -- promotion ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start-up: replay every model's versions through the gate. Raises NoModelError when no
        model (or not the requested default model) has a version that passes."""
        if not self.repository.is_dir():
            raise NoModelError(f"model repository {self.repository} does not exist")
        await self.refresh()
        if not self.serving:
            rejected = [f"{n}/{v}: {e.reason}" for n, v, e in self.listing() if e.state is VersionState.REJECTED]
            raise NoModelError(f"no servable model version in {self.repository}"
                               + (f" (rejected: {'; '.join(rejected)})" if rejected else ""))
        if self.requested_default and self.requested_default not in self.serving:
            raise NoModelError(f"default model {self.requested_default!r} has no servable version in {self.repository}")

    async def refresh(self) -> list[LoadedVersion]:
        """Find the repository's new versions and advance every model; returns the versions promoted."""
        async with self._advancing:
            self._merge(await asyncio.to_thread(self._scan))
            promoted = []
            for name in sorted(self.models):
                promoted += await self._advance(name)
            return promoted

    def _scan(self) -> dict[str, list[int]]:
        return {d.name: versions(d) for d in sorted(self.repository.iterdir())
                if d.is_dir() and not d.name.startswith(".")}

    def _merge(self, found: dict[str, list[int]]) -> None:
        """New versions join as AVAILABLE; versions gone from disk leave unless loaded."""
        for name, numbers in found.items():
            entries = self.models.setdefault(name, {})
            for number in numbers:
                entries.setdefault(number, VersionEntry())
            for number in [n for n, e in entries.items() if n not in numbers and e.loaded is None]:
                del entries[number]

    async def _advance(self, name: str) -> list[LoadedVersion]:
        entries, promoted = self.models[name], []
        for number in sorted(n for n in entries if n > self.serving.get(name, 0)):
            entry = entries[number]
            # A check that a pin started may have compared it with a version no longer serving.
            while entry.state is not VersionState.REJECTED and not (
                    entry.loaded is not None and entry.compared_with == self.serving.get(name, 0)):
                if await self._check(name, number) is None and entry.state is not VersionState.REJECTED:
                    return promoted  # interrupted: the server is stopping
            if entry.state is not VersionState.REJECTED:
                promoted.append(self._promote(name, number))
        return promoted

    def _promote(self, name: str, number: int) -> LoadedVersion:
        entries = self.models[name]
        previous = entries[self.serving[name]] if name in self.serving else None
        entry = entries[number]
        entry.state = VersionState.SERVING
        self.serving = {**self.serving, name: number}  # one assignment: a request sees the old or the new
        replaced = None
        if previous is not None:
            replaced = previous.loaded
            previous.state, previous.loaded = VersionState.AVAILABLE, None  # freed after its last request
            previous.reason = f"replaced by version {number}; a pin checks it again"
        log.info("serving %s version %d", name, number,
                 extra={"event": "promoted", "model": name, "version": number,
                        "replaced": replaced.version if replaced else None})
        for callback in self.on_promote:
            callback(entry.loaded, replaced)
        return entry.loaded

    # -- checks ------------------------------------------------------------------------------
    async def _check(self, name: str, number: int) -> LoadedVersion | None:
        """Check one version (concurrent callers share one check). None: rejected, or interrupted."""
        key = (name, number)
        if key not in self._checks:
            task = asyncio.get_running_loop().create_task(self._run_check(name, number))
            self._checks[key] = task
            task.add_done_callback(lambda _: self._checks.pop(key, None))
        return await asyncio.shield(self._checks[key])

    async def _run_check(self, name: str, number: int) -> LoadedVersion | None:
        entry = self.models[name][number]
        serving = self.serving.get(name, 0)
        replaces = self.models[name][serving].loaded if number > serving > 0 else None
        before = entry.state, entry.reason
        try:
            if entry.loaded is None:
                entry.state, entry.reason = VersionState.LOADING, "being checked"
                entry.loaded = await asyncio.to_thread(self.gate.check, self.repository / name / str(number), name, number)
                entry.state, entry.reason = VersionState.STANDBY, CHECKED
            if replaces is not None:
                entry.reason = f"{CHECKED}; {await asyncio.to_thread(self.gate.compare, entry.loaded, replaces)}"
            entry.compared_with = serving if replaces is not None else 0
        except GateFailure as e:
            entry.state, entry.reason, entry.loaded = VersionState.REJECTED, str(e), None
            log.error("rejected %s version %d: %s", name, number, e,
                      extra={"event": "rejected", "model": name, "version": number, "reason": str(e)})
            return None
        except GateInterrupted:
            if entry.loaded is None:
                entry.state, entry.reason = before
            return None
        translator = entry.loaded.translator
        cache_mb = round(translator.scheduler.cache_bytes_at_most / 2**20)
        log.info("accepted %s version %d (%s on %s): %s; its key/value caches hold at most %d MB", name, number,
                 entry.loaded.manifest.precision, translator.provider, entry.reason, cache_mb,
                 extra={"event": "accepted", "model": name, "version": number,
                        "precision": entry.loaded.manifest.precision, "provider": translator.provider,
                        "cache_mb_at_most": cache_mb})
        return entry.loaded

    # -- requests ----------------------------------------------------------------------------
    async def resolve(self, name: str = "", version: int = 0) -> LoadedVersion:
        """The version answering a call for `name` (empty: the default model); `version` 0 is
        the SERVING one. A pinned version is checked first if it is not loaded.

        Raises ModelNotFoundError, VersionRejectedError, or VersionUnavailableError.
        """
        name = name or self.default_model
        if name in self.models and name not in self.serving:
            raise ModelNotFoundError(f"model {name!r} has no version that passed the gate (ListModels says why); "
                                     f"available: {', '.join(sorted(self.serving))}")
        if name not in self.serving:
            raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(sorted(self.serving))}")
        entries = self.models[name]
        if version == 0:
            return entries[self.serving[name]].loaded
        if version not in entries and (self.repository / name / str(version)).is_dir():
            entries[version] = VersionEntry()  # published since the last look
        entry = entries.get(version)
        if entry is None:
            raise ModelNotFoundError(f"{name} has no version {version}; available: "
                                     f"{', '.join(map(str, sorted(entries)))}")
        if entry.loaded is None and entry.state is not VersionState.REJECTED:
            await self._check(name, version)
        if entry.state is VersionState.REJECTED:
            raise VersionRejectedError(name, version, entry.reason)
        if entry.loaded is None:
            raise VersionUnavailableError(f"{name} version {version} could not be checked: the server is stopping")
        return entry.loaded
