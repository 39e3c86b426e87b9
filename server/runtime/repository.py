"""The model repository: `<root>/<name>/<version>/` directories, each described by a manifest.

A version directory holds the ONNX graphs, the weights file they share (ONNX external data;
versions exported before it existed hold their weights inside each graph), the tokenizer and
`manifest.json`. The manifest
says what the files are (model config, languages, precision, library versions, parity report)
and the SHA-256 of every file, so a loader can refuse a corrupted or incomplete version
instead of serving wrong translations from it.

Versions are positive integers; directories whose names are not (such as the temporary
directories an export writes before its atomic rename) are not versions. Export writes
versions (export/publish.py); the server reads them. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from server.runtime.confidence import Calibration
from server.runtime.parity_report import ParityReport

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 5  # 5: one cross-attention entry per source, read by its beams' query grid (graph_io)
# Older formats' decoder graphs, and why the runtime cannot run them.
_OUTDATED_FORMATS = {1: "its decoder graph predates per-row positions, which step-level batching needs",
                     2: "its decoder graph returns a grown copy of the cache; the runtime keeps one in place",
                     3: "its decoder graph returns a fixed number of best tokens; the runtime asks for as many as "
                        "its widest beam needs",
                     4: "its decoder graph reads one cross-attention cache entry per row; the runtime keeps one per "
                        "source, shared by its beams"}


class ModelVersionError(Exception):
    """A version directory that must not be served: missing, incomplete or corrupted."""


@dataclass(frozen=True)
class Manifest:
    """What a version directory holds. Written by the export, read by every loader."""

    name: str
    version: int
    source_lang: str
    target_lang: str
    precision: str  # fp32, int8 or fp16
    model: dict[str, Any]  # ModelConfig.to_dict()
    graphs: dict[str, str]  # role (encoder, decoder) -> file name
    tokenizer: str  # file name of the SentencePiece model
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": ..., "bytes": ...}
    opset: int
    created: str  # ISO 8601, UTC
    source_checkpoint: dict[str, Any] = field(default_factory=dict)  # path, sha256, step, metrics
    libraries: dict[str, str] = field(default_factory=dict)  # torch, onnx, onnxruntime, ... versions
    optimizations: list[str] = field(default_factory=list)  # what the export applied to the graphs
    parity: ParityReport | None = None  # the export's verdict against its checkpoint
    probes: str = ""  # file name of the probes a loader replays before serving (export/probes.py)
    weights: str = ""  # file name of the weights the graphs share (export/weights.py); "" = inside each graph
    confidence: Calibration | None = None  # how the text path maps log-probability to confidence
    shortlist: str = ""  # file name of the vocabulary shortlist (server/runtime/shortlist.py); "" = none
    format: int = MANIFEST_FORMAT

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") in _OUTDATED_FORMATS:
            raise ModelVersionError(f"manifest format {data['format']}: {_OUTDATED_FORMATS[data['format']]}; "
                                    "export the version again with rosetta-export")
        if data.get("format") != MANIFEST_FORMAT:
            raise ModelVersionError(f"manifest format {data.get('format')!r} is not {MANIFEST_FORMAT}")
        data["parity"] = ParityReport.from_dict(data["parity"]) if data.get("parity") else None
        data["confidence"] = Calibration.from_dict(data["confidence"]) if data.get("confidence") else None
        return cls(**data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def load_manifest(version_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Read a version's manifest and, unless told not to, check every file against it.

    Raises ModelVersionError naming the first problem: no manifest, a listed file missing,
    a size or checksum mismatch, or a file present that the manifest does not list.
    """
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST
    if not path.is_file():
        raise ModelVersionError(f"{version_dir}: no {MANIFEST}; not a model version (or an incomplete one)")
    try:
        manifest = Manifest.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise ModelVersionError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    needed = set(manifest.graphs.values()) | {manifest.tokenizer} | {f for f in (manifest.probes, manifest.weights) if f}
    if not needed <= set(manifest.files):
        raise ModelVersionError(f"{path}: lists no checksum for {sorted(needed - set(manifest.files))}")
    if verify:
        for name, record in manifest.files.items():
            file = version_dir / name
            if not file.is_file():
                raise ModelVersionError(f"{version_dir}: {name} is missing")
            if file.stat().st_size != record["bytes"] or sha256_file(file) != record["sha256"]:
                raise ModelVersionError(f"{version_dir}: {name} does not match its checksum (corrupted or replaced)")
        extra = {p.name for p in version_dir.iterdir()} - set(manifest.files) - {MANIFEST}
        if extra:
            raise ModelVersionError(f"{version_dir}: files not in the manifest: {sorted(extra)}")
    return manifest


def versions(model_dir: str | Path) -> list[int]:
    """The version numbers present under `<root>/<name>/`, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def next_version(model_dir: str | Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1
