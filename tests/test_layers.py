"""The layers of the code base (docs/architecture.md), as import-linter contracts in pyproject.toml.

model (training, the PyTorch reference) <- export -> server.runtime (ONNX Runtime) <- server (gRPC)
client -> rosetta.v1 (the generated stubs) only
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import server
from tests.conftest import ROOT

CONTRACTS = {c["name"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def test_every_layering_contract_is_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"  # import-linter's command, in this environment
    out = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in out.stdout


def test_the_contracts_name_every_service_module():
    """The runtime may import no module of the service around it, and the exporter none either:
    a module added to server/ must join both lists."""
    service = {f"server.{m.name}" for m in pkgutil.iter_modules(server.__path__) if m.name != "runtime"}
    runtime = set(CONTRACTS["The runtime imports neither torch nor gRPC, nor the service around it"]["forbidden_modules"])
    exporter = set(CONTRACTS["The exporter uses the runtime only through its public API"]["forbidden_modules"])
    assert service <= runtime, service - runtime
    assert service <= exporter, service - exporter
