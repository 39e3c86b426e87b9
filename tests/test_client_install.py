"""The client installs alone: `pip install rosetta-mt` (no extras) in a fresh environment brings
grpcio and protobuf, not the runtime or torch, and that is enough to call a running server."""

from __future__ import annotations

import shutil
import subprocess
import venv

import pytest

from tests.builders import tiny_pairs
from tests.conftest import ROOT, Server

pytestmark = pytest.mark.slow  # a fresh environment, pip and a real server (pytest -m "not slow" skips it)

PAIRS = tiny_pairs()
SOURCES = ("pyproject.toml", "README.md", "protos", "client", "model", "export", "server")

PROGRAM = """
import importlib.util, sys
from client import TranslatorClient
heavy = [m for m in ("onnxruntime", "torch", "numpy", "sentencepiece") if importlib.util.find_spec(m)]
assert not heavy, f"the plain install brought {heavy}"
with TranslatorClient(sys.argv[1], timeout=30) as client:
    print(client.translate(sys.argv[2]))
"""


def test_the_plain_install_is_a_client_that_calls_a_server(service_repository, tmp_path):
    source = tmp_path / "source"  # the package's files only: an in-tree build would write into the checkout
    source.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], check=True, timeout=600)
    server = Server(service_repository)
    try:
        out = subprocess.run([str(python), "-c", PROGRAM, f"127.0.0.1:{server.port}", PAIRS[0][0]],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == PAIRS[0][1]
        cli = subprocess.run([str(tmp_path / "env" / "bin" / "rosetta-translate"), "--server",
                              f"127.0.0.1:{server.port}", PAIRS[1][0]], capture_output=True, text=True, timeout=120)
        assert cli.stdout.strip() == PAIRS[1][1], cli.stderr
    finally:
        assert server.stop() == 0
