"""Publishing a version: exports racing for one number each get their own, and no version is
ever half-written or overwritten."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import export.publish
from export.publish import publish, staging_dir
from server.runtime import MANIFEST, Manifest, versions


def staged(model_dir: Path, marker: str) -> tuple[Path, Manifest]:
    staging = staging_dir(model_dir)
    (staging / "weights.bin").write_text(marker)
    manifest = Manifest(name=model_dir.name, version=0, source_lang="en", target_lang="es", precision="fp32",
                        model={}, graphs={}, tokenizer="weights.bin", files={}, opset=18, created="now")
    return staging, manifest


def published(model_dir: Path) -> dict[int, tuple[int, str]]:
    """Each version: the number its manifest says, and whose files it holds."""
    return {n: (json.loads((model_dir / str(n) / MANIFEST).read_text())["version"],
                (model_dir / str(n) / "weights.bin").read_text()) for n in versions(model_dir)}


def test_an_export_that_loses_the_race_for_a_number_takes_the_next(tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny"
    first = publish(*staged(model_dir, "first"))
    real = export.publish.next_version
    stale = iter([1])  # as if it read the number just before the other export renamed onto it
    monkeypatch.setattr(export.publish, "next_version", lambda d: next(stale, None) or real(d))
    second = publish(*staged(model_dir, "second"))
    assert (first.name, second.name) == ("1", "2")
    assert published(model_dir) == {1: (1, "first"), 2: (2, "second")}


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_exports_each_get_their_own_version(tmp_path, round_):
    model_dir = tmp_path / "tiny"
    stages = [staged(model_dir, f"export-{i}") for i in range(8)]
    start = threading.Barrier(len(stages))
    results: list[Path] = []

    def run(staging: Path, manifest: Manifest) -> None:
        start.wait()
        results.append(publish(staging, manifest))

    threads = [threading.Thread(target=run, args=stage) for stage in stages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(p.name) for p in results) == list(range(1, 9))
    contents = published(model_dir)
    assert all(number == recorded for number, (recorded, _) in contents.items())
    assert sorted(marker for _, marker in contents.values()) == sorted(f"export-{i}" for i in range(8))
    assert not list(model_dir.glob(".staging-*"))
