"""The models a server serves: every model in the repository, its newest valid version loaded.

Requests name a model (or none: the default model) and optionally pin a version. A version
that fails verification (checksums, manifest) is recorded as rejected with its reason, and
the newest valid one serves instead. No torch here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from server.repository import Manifest, ModelVersionError, load_manifest, versions
from server.sessions import SessionConfig
from server.translator import Translator

log = logging.getLogger("rosetta.registry")


class ModelNotFoundError(LookupError):
    """No such model, or no such version of it."""


class VersionNotLoadedError(LookupError):
    """The version is in the repository but not loaded: `ModelRegistry.resolve` loads it."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"{name} version {version} is not loaded")
        self.name, self.version = name, version


class NoModelError(RuntimeError):
    """The repository holds no servable model."""


@dataclass
class LoadedVersion:
    name: str
    version: int
    manifest: Manifest
    translator: Translator
    loaded_at: str

    @property
    def parity_summary(self) -> str:
        parity = self.manifest.parity
        if not parity:
            return "no parity report"
        runs = ", ".join(f"{'greedy' if r['beam_size'] == 1 else 'beam ' + str(r['beam_size'])} "
                         f"{r['identical']}/{r['sentences']} identical, BLEU {r['onnxruntime']['bleu']:.1f}"
                         for r in parity.get("translations", []))
        return f"{'passed' if parity.get('passed') else 'FAILED'} ({self.manifest.precision}): {runs}"


@dataclass
class RejectedVersion:
    name: str
    version: int
    reason: str


class ModelRegistry:
    """Loaded model versions, by name and version."""

    def __init__(self, repository: Path, session_config: SessionConfig, default_model: str = "") -> None:
        self.repository = Path(repository)
        self.session_config = session_config
        self.requested_default = default_model
        self.loaded: dict[str, dict[int, LoadedVersion]] = {}
        self.rejected: list[RejectedVersion] = []
        self._loading: dict[tuple[str, int], asyncio.Task] = {}

    def load(self) -> None:
        """Load the newest valid version of every model in the repository."""
        if not self.repository.is_dir():
            raise NoModelError(f"model repository {self.repository} does not exist")
        loaded: dict[str, dict[int, LoadedVersion]] = {}
        for model_dir in sorted(p for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for number in reversed(versions(model_dir)):
                try:
                    loaded[model_dir.name] = {number: self.open(model_dir.name, number)}
                    break
                except ModelVersionError as e:
                    log.error("rejected %s version %d: %s", model_dir.name, number, e,
                              extra={"event": "rejected", "model": model_dir.name, "version": number, "reason": str(e)})
                    self.rejected.append(RejectedVersion(model_dir.name, number, str(e)))
        if not loaded:
            raise NoModelError(f"no servable model version in {self.repository}")
        if self.requested_default and self.requested_default not in loaded:
            raise NoModelError(f"default model {self.requested_default!r} is not in {self.repository}")
        self.loaded = loaded  # one assignment: requests see no half-loaded registry

    def open(self, name: str, number: int) -> LoadedVersion:
        """Verify and load one version, without serving it yet."""
        directory = self.repository / name / str(number)
        manifest = load_manifest(directory)
        translator = Translator(directory, self.session_config)
        log.info("loaded %s version %d (%s) on %s", name, number, manifest.precision, translator.provider,
                 extra={"event": "loaded", "model": name, "version": number, "precision": manifest.precision,
                        "provider": translator.provider})
        return LoadedVersion(name, number, manifest, translator,
                             datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def default_model(self) -> str:
        if self.requested_default:
            return self.requested_default
        return "en-es" if "en-es" in self.loaded else sorted(self.loaded)[0]

    def get(self, name: str = "", version: int = 0) -> LoadedVersion:
        """The loaded version serving `name` (the default model if empty); `version` 0 is the newest.

        Raises ModelNotFoundError, or VersionNotLoadedError for a pinned version that exists in
        the repository but is not loaded yet.
        """
        name = name or self.default_model
        if name not in self.loaded:
            raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(sorted(self.loaded))}")
        by_version = self.loaded[name]
        if version == 0:
            return by_version[max(by_version)]
        if version in by_version:
            return by_version[version]
        if version in versions(self.repository / name):
            raise VersionNotLoadedError(name, version)
        raise ModelNotFoundError(f"{name} has no version {version}; available: "
                                 f"{', '.join(map(str, versions(self.repository / name)))}")

    async def resolve(self, name: str = "", version: int = 0) -> LoadedVersion:
        """As `get`, loading a pinned version on first use.

        The load (checksums, sessions: a second or more) runs in a worker thread so the event
        loop keeps answering; concurrent requests for the same version share one load.
        """
        try:
            return self.get(name, version)
        except VersionNotLoadedError as missing:
            key = (missing.name, missing.version)
        if key not in self._loading:
            task = asyncio.get_running_loop().create_task(self._load_pinned(*key))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            return await asyncio.shield(self._loading[key])
        except ModelVersionError as e:
            raise ModelNotFoundError(f"{key[0]} version {key[1]} cannot be served: {e}") from None

    async def _load_pinned(self, name: str, number: int) -> LoadedVersion:
        loaded = await asyncio.to_thread(self.open, name, number)
        # Into the model's current map (a swap meanwhile replaced it: the pin joins the new one).
        return self.loaded.setdefault(name, {}).setdefault(number, loaded)

    def swap(self, version: LoadedVersion) -> LoadedVersion | None:
        """Serve `version` as its model's newest version from now on; returns the one it replaces.

        One assignment: a request sees either the old map or the new. Requests holding the
        replaced version finish on it; it is freed after the last of them.
        """
        previous = self.loaded.get(version.name, {})
        self.loaded = {**self.loaded, version.name: {version.version: version}}
        return previous[max(previous)] if previous else None

    def all(self) -> list[LoadedVersion]:
        return [v for name in sorted(self.loaded) for _, v in sorted(self.loaded[name].items(), reverse=True)]
