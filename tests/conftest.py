"""Shared fixtures: a tiny parallel corpus and a tiny model trained on it until it memorises it.

Everything here is built inside the test session, in seconds, so the suite needs no committed
weights and no downloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model.tsv import write_tsv
from tests.builders import tiny_pairs

TINY_MODEL_ARGS = [
    "--vocab-size", "300", "--d-model", "64", "--heads", "4", "--ffn", "128",
    "--encoder-layers", "2", "--decoder-layers", "2", "--max-positions", "64", "--dropout", "0",
    "--lr", "3e-3", "--warmup-steps", "30", "--label-smoothing", "0", "--max-tokens", "4000",
    "--max-steps", "250", "--eval-every", "1000", "--save-every", "1000", "--log-every", "50",
    "--threads", "2",
    # fp32 everywhere, so the tiny run is the same on CPUs with and without native bf16.
    "--cpu-bf16", "off",
]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A folder with train.tsv and valid.tsv (the same 32 pairs: the point is memorising them)."""
    folder = tmp_path_factory.mktemp("corpus")
    pairs = tiny_pairs()
    write_tsv(folder / "train.tsv", pairs)
    write_tsv(folder / "valid.tsv", pairs)
    return folder


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus, tmp_path_factory) -> Path:
    """A run directory in which `rosetta-train` has memorised the tiny corpus."""
    from model.train import main

    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["--train", str(tiny_corpus / "train.tsv"), "--valid", str(tiny_corpus / "valid.tsv"),
                 "--out", str(run_dir), *TINY_MODEL_ARGS])
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The newest checkpoint of the tiny run."""
    steps = sorted((tiny_run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return steps[-1]


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """A model repository shared by the session's tests."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_version(tiny_checkpoint, repository) -> Path:
    """Version 1 of the tiny model, exported in fp32 through the full parity gate."""
    from export.cli import export_version

    version_dir, report = export_version(tiny_checkpoint, repository, "tiny", tiny_pairs())
    assert report["passed"], report["failures"]
    return version_dir
