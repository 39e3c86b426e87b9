"""The README, tried as a new user would: every command in it works as written.

Its ```sh blocks are read line by line (comments dropped) and its ```python blocks as programs.
Each command is run, in a copy of this checkout (exports and runs never touch the real one),
against a server started by `make serve` itself, or, for the reason given in NOT_RUN, checked
without running: docker and kubectl (no engine or cluster on these machines;
tests/test_deployment.py validates everything they use), work of hours (full training,
benchmarks) and `make test` (this suite). Their make targets must exist and their flags must
parse. SHORTENED names the only values changed in a command that runs, for CI's time budget:
how long training runs, and how many pairs training validates on, the export's parity gate
checks and evaluation scores. A README command that is neither run nor classified here fails
the test, so a new one cannot go unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass

from client import TranslatorClient
from tests.conftest import ROOT, wait_for
from tests.versions import DEFAULT_VERSION

pytestmark = pytest.mark.slow  # real server processes (pytest -m "not slow" skips them)

README = (ROOT / "README.md").read_text()

NOT_RUN = {
    "make test": "this suite",
    "make bench": "benchmarks take tens of minutes",
    "make bench-grpc": "benchmarks take minutes on a quiet machine",
    ".venv/bin/rosetta-train --train data/en-es/train.tsv --valid data/en-es/valid.tsv --out runs/en-es":
        "training from scratch takes hours",
    ".venv/bin/rosetta-evaluate --model runs/en-es/best --test data/en-es/test.tsv --beam 4":
        "needs that training's checkpoint",
    ".venv/bin/rosetta-export runs/en-es/best --repository models --name en-es --test data/en-es/test.tsv":
        "needs that training's checkpoint",
}
# program -> {flag: value}, the flag's value replaced where the command has it, else added
SHORTENED = {"rosetta-train": {"--max-steps": "2", "--valid-bleu-sentences": "8"},
             "rosetta-export": {"--parity-sentences": "32"},
             "rosetta-evaluate": {"--sentences": "300"}}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def commands() -> list[str]:
    found = []
    for block in blocks("sh"):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                found.append(command)
    return list(dict.fromkeys(found))


def needs_engine(command: str) -> bool:
    return command.split()[0] in ("docker", "kubectl")


def shortened(command: str) -> list[str]:
    words = shlex.split(command)
    for flag, value in SHORTENED.get(Path(words[0]).name, {}).items():
        if flag in words:
            words[words.index(flag) + 1] = value
        else:
            words += [flag, value]
    return words


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The checkout's files (what git tracks or would, as they are now) in a fresh directory, with
    this checkout's environment."""
    copy = tmp_path_factory.mktemp("readme") / "rosetta"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the work tree is left out
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


@pytest.fixture(scope="module")
def served(checkout):
    """`make serve`, as the README says, on localhost:50051."""
    process = subprocess.Popen(["make", "serve"], cwd=checkout, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                break
        else:
            raise AssertionError("make serve exited before serving (is localhost:50051 or :9464 in use?)")
        yield process
    finally:
        for child in children(process.pid):  # Ctrl-C as the README says, to the server under make
            os.kill(child, signal.SIGINT)
        assert process.wait(timeout=60) == 0


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def run(command: str | list[str], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(command, shell=isinstance(command, str), cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_every_command_is_run_or_classified():
    """Docker and kubectl lines, and those in NOT_RUN, are not run; every other line is run below."""
    run_below = [c for c in commands() if not needs_engine(c) and c not in NOT_RUN]
    assert set(NOT_RUN) <= set(commands()), "NOT_RUN names a command the README no longer has"
    assert set(run_below) == set(FIRST_TRANSLATION + FORMAT + GRPCURL + RETRAIN + EVALUATE + ["make serve"])


def test_commands_not_run_name_real_targets_and_flags():
    from export.cli import build_parser as export_parser
    from export.evaluate import build_parser as evaluate_parser
    from model.train import build_parser as train_parser

    parsers = {"rosetta-train": train_parser(), "rosetta-export": export_parser(), "rosetta-evaluate": evaluate_parser()}
    targets = re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
    for command in [*NOT_RUN, *(c for c in commands() if c.startswith("make"))]:
        words = shlex.split(command)
        if words[0] == "make":
            assert words[1] in targets, command
        else:
            parsers[Path(words[0]).name].parse_args(words[1:])
    for command in filter(needs_engine, commands()):
        assert command.split()[1] in ("compose", "build", "push", "apply", "rollout", "port-forward"), command


FIRST_TRANSLATION = [
    '.venv/bin/rosetta-translate "Hello, world"',
    '.venv/bin/rosetta-translate "Open the file and save your changes."',
    'echo "Open the file. Save it." | .venv/bin/rosetta-translate --beam 4 --n-best 2',
    ".venv/bin/rosetta-translate --file docs/examples/help.txt",
]
FORMAT = [
    '.venv/bin/rosetta-translate "Error: file %s could not be opened."',
    '.venv/bin/rosetta-translate --format html "<p>Click <b>Save</b> to keep your changes.</p>"',
    '.venv/bin/rosetta-translate --glossary file=fichero --keep LibreOffice --report "LibreOffice opens the file."',
]
GRPCURL = [c for c in commands() if c.startswith("grpcurl")]
RETRAIN = [c for c in commands() if c.startswith(("make data", ".venv/bin/rosetta-train", ".venv/bin/rosetta-export"))
           and c not in NOT_RUN]
EVALUATE = [".venv/bin/rosetta-evaluate --model models/en-es/11 --test data/en-es/test.tsv --beam 4"]


def spanish(text: str) -> bool:
    return bool(re.search(r"\b(el|la|los|las|de|y|que|en|un|una)\b", text.lower()))


def test_a_first_translation(checkout, served):
    """The issue's own check: a fresh clone, `make serve`, then "Hello, world" comes back in Spanish."""
    hello = run(FIRST_TRANSLATION[0], checkout).strip()
    assert "hola" in hello.lower() and "mundo" in hello.lower(), hello
    one = run(FIRST_TRANSLATION[1], checkout).strip()
    assert spanish(one) and one != "Open the file and save your changes."
    n_best = run(FIRST_TRANSLATION[2], checkout).strip().splitlines()
    assert len(n_best) == 2 and all(re.match(r"-?\d+\.\d+\t\S", line) for line in n_best)
    lines = run(FIRST_TRANSLATION[3], checkout).strip().splitlines()
    assert len(lines) == len((checkout / "docs/examples/help.txt").read_text().splitlines())
    out = run([sys.executable, "-c", blocks("python")[0]], checkout).strip().splitlines()
    assert spanish(out[0]) and f"('en-es', {DEFAULT_VERSION.name}, 'CPUExecutionProvider')" in out[2]


def test_placeholders_markup_and_glossaries(checkout, served):
    """The README's examples: what must come back unchanged does."""
    printf, html, glossary = (run(command, checkout) for command in FORMAT)
    assert printf.count("%s") == 1 and spanish(printf)
    assert html.startswith("<p>") and html.strip().endswith("</p>") and html.count("<b>") == html.count("</b>") == 1
    assert "LibreOffice" in glossary and "fichero" in glossary
    report = subprocess.run(FORMAT[2], shell=True, cwd=checkout, capture_output=True, text=True).stderr
    assert "('file', 'fichero')" in report and "LibreOffice" in report
    translation, report = run([sys.executable, "-c", blocks("python")[1]], checkout).strip().splitlines()
    assert translation.startswith("<p>") and translation.endswith("</p>") and "%s" in translation
    assert translation.count("<b>") == translation.count("</b>") == 1 and "modificaciones" in translation
    assert "protected=['%s']" in report and "('changes', 'modificaciones')" in report and "tags=1" in report


def test_the_grpcurl_calls(checkout, served):
    """With grpcurl installed, run them; either way, check what they name through reflection."""
    assert len(GRPCURL) == 3
    if shutil.which("grpcurl"):
        assert "rosetta.v1.Translator" in run(GRPCURL[0], checkout)
        assert spanish(json.loads(run(GRPCURL[1], checkout))["translation"])
        assert json.loads(run(GRPCURL[2], checkout))["status"] == "SERVING"
    with grpc.insecure_channel("localhost:50051") as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        for command in GRPCURL[1:]:
            words = shlex.split(command)
            service, method = words[-1].rsplit("/", 1)
            request = pool.FindServiceByName(service).FindMethodByName(method).input_type
            json_format.Parse(words[words.index("-d") + 1], GetMessageClass(request)())


def test_retrain_export_reload(checkout, served):
    """The routine on the committed data: the running server gates the version the export
    published and reaches a verdict on it, serving it or rejecting it for its quality (a verified
    export passes every other check)."""
    assert RETRAIN[-1].startswith(".venv/bin/rosetta-export")
    for command in RETRAIN:
        out = run(shortened(command) if not command.startswith("make") else command, checkout, timeout=900)
    number = int(Path(json.loads(out.strip().splitlines()[-1])["version_dir"]).name)
    assert number == int(DEFAULT_VERSION.name) + 1  # after the committed version
    with TranslatorClient("localhost:50051") as client:
        def new() -> list:
            return [m for m in client.models() if m.version == number and m.state in ("SERVING", "REJECTED")]

        wait_for(new, seconds=180)
        (verdict,) = new()
        if verdict.state == "SERVING":
            assert verdict.default_version and "probes identical" in verdict.reason
        else:
            assert "held-out chrF" in verdict.reason, verdict.reason
        assert spanish(client.translate("Open the file."))


def test_evaluate_the_committed_model(checkout):
    run("make data", checkout)
    report = json.loads(run(shortened(EVALUATE[0]), checkout).strip().splitlines()[-1])
    assert report["sentences"] == 300 and report["bleu"] > 20


def test_the_configuration_table_lists_every_setting_with_its_default():
    from dataclasses import fields

    from server.config import ServerConfig, env_name

    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"^\| `--([a-z-]+)` \| `(ROSETTA_[A-Z_]+)` \| ([^|]+) \|", README, flags=re.M)}
    for f in fields(ServerConfig):
        flag = f.name.replace("_", "-")
        assert flag in rows, f"--{flag} is missing from the README's configuration table"
        variable, default = rows[flag]
        assert variable == env_name(f.name)
        if f.default == "":  # off, or chosen at start-up: the table says which in words
            assert default.startswith("("), (flag, default)
        else:
            assert default.split()[0] == str(f.default), (flag, default)
    assert len(rows) == len(fields(ServerConfig)), set(rows) - {f.name.replace("_", "-") for f in fields(ServerConfig)}
