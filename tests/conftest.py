"""Shared fixtures: a tiny parallel corpus and a tiny model trained on it until it memorises it;
`Server`, a real rosetta-serve process on that model, for the tests that talk gRPC to it.

Everything here is built inside the test session, in seconds, so the suite needs no committed
weights and no downloads.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from model.tsv import write_tsv
from rosetta.v1 import translator_pb2_grpc
from tests.builders import tiny_pairs

ROOT = Path(__file__).resolve().parent.parent

TINY_MODEL_ARGS = [
    "--vocab-size", "300", "--d-model", "64", "--heads", "4", "--ffn", "128",
    "--encoder-layers", "2", "--decoder-layers", "2", "--max-positions", "64", "--dropout", "0",
    "--lr", "3e-3", "--warmup-steps", "30", "--label-smoothing", "0", "--max-tokens", "4000",
    "--max-steps", "250", "--eval-every", "1000", "--save-every", "1000", "--log-every", "50",
    "--threads", "2",
    # fp32 everywhere, so the tiny run is the same on CPUs with and without native bf16.
    "--cpu-bf16", "off",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", choices=("cpu", "cuda"), default="cpu",
                     help="where tests/test_runtime.py runs the graphs: cuda on a GPU machine (the suite "
                          "itself needs none)")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


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
    from model.checkpoint import step_checkpoints

    return step_checkpoints(tiny_run / "checkpoints")[-1]


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """A model repository shared by the session's tests."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_version(tiny_checkpoint, repository) -> Path:
    """Version 1 of the tiny model, exported in fp32 through the full parity gate."""
    from export.cli import export_version

    version_dir, report = export_version(tiny_checkpoint, repository, "tiny", tiny_pairs())
    assert report.passed, report.failures
    return version_dir


@pytest.fixture(scope="session")
def worse_version(tiny_checkpoint, tmp_path_factory) -> Path:
    """A version that exports and verifies fine but translates worse: its held-out chrF drops."""
    import torch

    from export.cli import export_version
    from model.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("worse")
    worse = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in worse.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    save_checkpoint(folder / "checkpoint", worse.model, worse.tokenizer, worse.info)
    version_dir, report = export_version(folder / "checkpoint", folder / "models", "tiny", tiny_pairs(), beam_sizes=(1,))
    assert version_dir is not None, report
    return version_dir


@pytest.fixture(scope="module")
def service_repository(tiny_version, tmp_path_factory) -> Path:
    """A repository holding only version 1 of the tiny model (other tests add versions to theirs)."""
    root = tmp_path_factory.mktemp("service-models")
    shutil.copytree(tiny_version, root / "tiny" / "1")
    return root


class Server:
    """A rosetta-serve subprocess and a channel to it."""

    def __init__(self, repository: Path, *extra: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.main", "--repository", str(repository), "--port", "0", "--device", "cpu",
             "--threads", "1", "--metrics-port", "0", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server did not start: {self.process.stderr.read()}")
        self.started = json.loads(line)
        self.port = self.started["port"]
        address = f"localhost:{self.port}"
        self.channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        self.stub = translator_pb2_grpc.TranslatorStub(self.channel)

    def stop(self) -> int:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def wait_for(condition: Callable[[], object], seconds: float = 90) -> None:
    """Poll until `condition()` holds: servers change state in the background."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
