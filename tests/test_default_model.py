"""The committed default model: its served version is intact, is what its recipe made, and is
what training starts from."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.search import DecodeOptions
from model.decoding import translate_ids
from server.registry import ModelRegistry, VersionState
from server.runtime import Gate, SessionConfig, load_manifest, sha256_file
from tests.versions import DEFAULT_VERSION

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "models"
VERSION = DEFAULT_VERSION


def test_the_served_version_verifies_and_passed_its_gate():
    manifest = load_manifest(VERSION)  # every checksum, the shared weights file's included
    assert (manifest.source_lang, manifest.target_lang, manifest.precision) == ("en", "es", "fp32")
    assert manifest.parity.passed
    for run in manifest.parity.translations:  # token-identical to PyTorch on the whole test split
        assert run.identical == run.sentences == 1897
    beam = next(run for run in manifest.parity.translations if run.beam_size == 4)
    assert beam.onnxruntime.bleu >= 20.0


def test_the_served_version_holds_the_recipes_checkpoint_and_training_starts_from_it():
    """Exported from the sentinel fine-tune's best checkpoint (`make finetune-format`,
    docs/format.md), stored in fp16: the version's weights file is that checkpoint's weights
    file byte for byte, so no separate checkpoint needs committing."""
    manifest = load_manifest(VERSION)
    recipe = re.search(r"^finetune-format:.*?--max-steps (\d+)", (ROOT / "Makefile").read_text(), flags=re.S | re.M)
    assert manifest.source_checkpoint["step"] == int(recipe.group(1))  # its best step was its last
    assert sha256_file(VERSION / manifest.weights) == manifest.source_checkpoint["sha256"]
    checkpoint = load_checkpoint(VERSION)  # what `rosetta-train --init-from models/en-es/<N>` starts from
    assert checkpoint.config == manifest.config and checkpoint.info["step"] == manifest.source_checkpoint["step"]
    assert checkpoint.tokenizer.to_bytes() == (VERSION / manifest.tokenizer).read_bytes()
    # Those PyTorch weights translate the probes to the very tokens ONNX Runtime gave when the version was verified.
    probes = json.loads((VERSION / manifest.probes).read_text())["probes"]
    for probe in probes:
        (hypotheses,) = translate_ids(checkpoint.model, torch.tensor([probe["source_ids"]]), DecodeOptions(beam_size=1))
        assert hypotheses[0].tokens == probe["greedy"], probe["source"]


def test_it_carries_sentinels_and_a_confidence_calibration():
    """The text path protects placeholders and tags with sentinels only for a model that learned
    them (docs/format.md), and reports a calibrated confidence only where the export fitted one."""
    manifest = load_manifest(VERSION)
    checkpoint = load_checkpoint(VERSION)
    assert checkpoint.tokenizer.has_sentinels and manifest.config.vocab_size == checkpoint.tokenizer.vocab_size
    assert manifest.confidence is not None and manifest.confidence.source == "valid.tsv"
    assert manifest.confidence.sentences > 1000 and manifest.confidence.slope > 0


def test_the_server_would_accept_it_and_it_translates(device):
    """What `make serve` serves: the registry's start-up, through the whole gate."""
    async def start() -> ModelRegistry:
        registry = ModelRegistry(REPOSITORY, Gate(SessionConfig(device=device)))
        await registry.start()
        return registry

    registry = asyncio.run(start())
    (version,) = registry.serving_versions()
    assert (version.name, version.version) == ("en-es", int(VERSION.name))
    entry = registry.models["en-es"][int(VERSION.name)]
    assert entry.state is VersionState.SERVING and entry.reason.startswith("probes identical")
    (translation,) = version.translator.translate(["Open the file."], beam_size=4)
    assert translation.strip() and translation != "Open the file."
