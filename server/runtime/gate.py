"""The gate every model version passes before it answers a call, pinned or not.

1. verified: every file matches the manifest's checksums (server/runtime/repository.py);
2. loaded: the graphs open in ONNX Runtime and the tokenizer loads;
3. smoke: it translates a sentence, and the translation is not empty;
4. probes: the export's probes (export/probes.py), replayed through this runtime, give the same
   tokens, greedy and beam 4 (it is the graph that was verified);
5. quality: when it would replace a version, its chrF on its own held-out pairs may not fall more
   than `max_chrf_drop` below the replaced version's on the same pairs (a model's first version
   has nothing to be compared with).

Any failure, expected or not (a corrupt protobuf, missing probes, a bug), is the version's
rejection with a reason a person can act on; only a stop of the server interrupts the gate.
No torch, no gRPC here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from model.scoring import score_translations
from server.runtime.probes import Probes, replay
from server.runtime.repository import Manifest, ModelVersionError, load_manifest
from server.runtime.sessions import DeviceUnavailableError, SessionConfig
from server.runtime.translator import Translator


class GateFailure(Exception):
    """The version failed the gate; the message says which check and why."""


class GateInterrupted(Exception):
    """The server is stopping: the check was abandoned, which says nothing about the version."""


@dataclass
class LoadedVersion:
    """A version that passed the gate in this process, ready to translate."""

    name: str
    version: int
    manifest: Manifest
    translator: Translator
    loaded_at: str

    @property
    def parity_summary(self) -> str:
        return self.manifest.parity.summary() if self.manifest.parity else "no parity report"


def heldout_chrf(translator: Translator, pairs: list[tuple[str, str]], beam_size: int) -> float:
    hypotheses = translator.translate([s for s, _ in pairs], beam_size=beam_size)
    return score_translations(hypotheses, [t for _, t in pairs])["chrf"]


class Gate:
    """Checks versions of one repository with one session configuration."""

    def __init__(self, session_config: SessionConfig, *, max_chrf_drop: float = 1.0,
                 stopping: threading.Event | None = None) -> None:
        self.session_config = session_config
        self.max_chrf_drop = max_chrf_drop
        self.stopping = stopping or threading.Event()

    def check(self, directory: Path, name: str, number: int) -> LoadedVersion:
        """Checks 1-4 on the version in `directory` (in a worker thread: a second or more).

        Returns the loaded version; raises GateFailure naming the failed check, GateInterrupted
        when the server stops meanwhile, or DeviceUnavailableError (the server's configuration,
        not the version, is wrong).
        """
        try:
            manifest = load_manifest(directory)
        except ModelVersionError as e:
            raise GateFailure(str(e)) from None
        self._continue()
        try:
            translator = Translator(directory, self.session_config, manifest=manifest)
        except DeviceUnavailableError:
            raise
        except Exception as e:
            raise GateFailure(f"cannot be loaded: {type(e).__name__}: {_first_line(e)}") from None
        with _failures_rejected():
            self._smoke_and_probes(translator, manifest)
        return LoadedVersion(name, number, manifest, translator, datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def compare(self, candidate: LoadedVersion, replaces: LoadedVersion) -> str:
        """Check 5: `candidate` against the version it would replace, on the candidate's held-out
        pairs (in a worker thread). Returns the verdict or raises GateFailure."""
        with _failures_rejected():
            heldout = self._probes(candidate.translator, candidate.manifest).heldout
            self._continue()
            new = heldout_chrf(candidate.translator, heldout.pairs, heldout.beam_size)
            self._continue()
            old = heldout_chrf(replaces.translator, heldout.pairs, heldout.beam_size)
        if new < old - self.max_chrf_drop:
            raise GateFailure(f"held-out chrF {new:.2f} is more than {self.max_chrf_drop} below version "
                              f"{replaces.version}'s {old:.2f}")
        return f"held-out chrF {new:.2f} (version {replaces.version}: {old:.2f})"

    @staticmethod
    def _probes(translator: Translator, manifest: Manifest) -> Probes:
        if not manifest.probes:
            raise GateFailure("the version has no probes (exported by an older rosetta-export?)")
        return Probes.read(translator.graphs.dir / manifest.probes)

    def _smoke_and_probes(self, translator: Translator, manifest: Manifest) -> None:
        probes = self._probes(translator, manifest).probes
        smoke = translator.translate([probes[0].source], beam_size=1)[0]
        if not smoke.strip():
            raise GateFailure("smoke translation came back empty")
        for name, beam in (("greedy", 1), ("beam4", 4)):
            self._continue()
            tokens = replay(translator.graphs, [p.source_ids for p in probes], beam)
            differing = [i for i, (a, p) in enumerate(zip(tokens, probes)) if a != getattr(p, name)]
            if differing:
                raise GateFailure(f"{name} probes differ from the export's at sentences {differing[:5]}")

    def _continue(self) -> None:
        if self.stopping.is_set():
            raise GateInterrupted("the server is stopping")


@contextmanager
def _failures_rejected() -> Iterator[None]:
    """Any error from here is the version's: a malformed probes file, or a bug in its checks."""
    try:
        yield
    except (GateFailure, GateInterrupted):
        raise
    except Exception as e:
        raise GateFailure(f"checking it failed: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
