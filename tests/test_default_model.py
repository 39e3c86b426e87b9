"""The committed default model: its checkpoint and its served version are intact and agree."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model.checkpoint import load_checkpoint
from server.runtime import Gate
from server.registry import ModelRegistry, VersionState
from server.runtime import SessionConfig, load_manifest, sha256_file

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "en-es"
REPOSITORY = ROOT / "models"


def test_the_served_version_verifies_and_passed_its_gate():
    manifest = load_manifest(REPOSITORY / "en-es" / "2")  # every checksum
    assert (manifest.source_lang, manifest.target_lang) == ("en", "es")
    assert manifest.parity["passed"]
    beam = next(run for run in manifest.parity["translations"] if run["beam_size"] == 4)
    assert beam["sentences"] == 1897 and beam["onnxruntime"]["bleu"] >= 20.0


def test_the_committed_checkpoint_is_the_exported_model():
    checkpoint = load_checkpoint(CHECKPOINT)
    manifest = load_manifest(REPOSITORY / "en-es" / "2")
    assert checkpoint.config == manifest.config
    assert checkpoint.tokenizer.to_bytes() == (REPOSITORY / "en-es" / "2" / "tokenizer.model").read_bytes()
    assert checkpoint.info["step"] == manifest.source_checkpoint["step"]
    # Exported from these very weights (stored in fp16), not from a copy that could drift.
    assert sha256_file(CHECKPOINT / "model.safetensors") == manifest.source_checkpoint["sha256"]


def test_the_server_would_accept_it_and_it_translates(device):
    """What `make serve` serves: the registry's start-up, through the whole gate."""
    async def start() -> ModelRegistry:
        registry = ModelRegistry(REPOSITORY, Gate(SessionConfig(device=device)))
        await registry.start()
        return registry

    registry = asyncio.run(start())
    (version,) = registry.serving_versions()
    assert (version.name, version.version) == ("en-es", 2)
    entry = registry.models["en-es"][2]
    assert entry.state is VersionState.SERVING and entry.reason.startswith("probes identical")
    (translation,) = version.translator.translate(["Open the file."], beam_size=4)
    assert translation.strip() and translation != "Open the file."
