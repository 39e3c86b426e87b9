"""Model versions to publish into a repository under test: good copies, corrupt, unloadable,
with wrong probes. Each is what an operator or a broken tool could leave there."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from server.runtime import MANIFEST, file_record


def publish(repository: Path, name: str, source: Path, change: Callable[[Path], None] | None = None) -> int:
    """Copy a version directory, change it, and publish it atomically as the model's next version."""
    model_dir = repository / name
    number = max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0) + 1
    staging = model_dir / f".staging-test-{number}"
    shutil.copytree(source, staging)
    if change is not None:
        change(staging)
    staging.rename(model_dir / str(number))
    return number


def reseal(version_dir: Path) -> None:
    """Rewrite the manifest's checksums for the files as they are now (what a careless tool might do)."""
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest["files"] = {name: file_record(version_dir / name) for name in manifest["files"]}
    (version_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def corrupt(version_dir: Path) -> None:
    """One flipped byte in the decoder: its checksum no longer matches."""
    data = bytearray((version_dir / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version_dir / "decoder.onnx").write_bytes(bytes(data))


def unloadable(version_dir: Path) -> None:
    """The decoder truncated to half, with checksums that match: it passes verification, then fails to load."""
    path = version_dir / "decoder.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reseal(version_dir)


def wrong_probes(version_dir: Path) -> None:
    """Probes that this graph does not reproduce (checksums resealed): the gate must catch it."""
    probes = json.loads((version_dir / "probes.json").read_text())
    probes["probes"][0]["greedy"] = probes["probes"][0]["greedy"][::-1] + [5]
    (version_dir / "probes.json").write_text(json.dumps(probes))
    reseal(version_dir)


REPOSITORY = Path(__file__).resolve().parent.parent / "models"
# The committed default model's served version: the newest one in the repository.
DEFAULT_VERSION = max((p for p in (REPOSITORY / "en-es").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
