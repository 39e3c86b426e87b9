"""A model version's life on a running server, and requests that must neither hang nor break it.

Each test here reproduces one defect an outside load test found (issue 11) against a real
`rosetta-serve` process, and states what must hold instead:

- a version answers a call, pinned or not, only after it passed the whole gate in this process;
- pinning never changes the default; a rejected version is refused with its reason;
- a version that cannot even be loaded is rejected and blocks nothing;
- a restart never serves a version the gate rejects;
- malformed messages get INVALID_ARGUMENT, unary or streaming, and no stream hangs or holds
  up shutdown;
- a request larger than the queue can ever hold is INVALID_ARGUMENT, not "retry later";
- SIGTERM at any moment stops gracefully with exit 0; SIGHUP at any moment is harmless.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from rosetta.v1 import translator_pb2 as pb
from tests.builders import tiny_pairs
from tests.conftest import ROOT, Server, wait_for
from tests.versions import publish, unloadable, wrong_probes

pytestmark = pytest.mark.slow  # real server processes (pytest -m "not slow" skips them)

PAIRS = tiny_pairs()
State = pb.VersionState


@pytest.fixture
def scratch(tiny_version, tmp_path) -> Path:
    """A scratch repository holding version 1 of the tiny model."""
    root = tmp_path / "models"
    shutil.copytree(tiny_version, root / "tiny" / "1")
    return root


def states(server: Server) -> dict[int, tuple[int, str]]:
    """Each version's (state, reason) as ListModels reports it."""
    return {m.version: (m.version_state, m.reason)
            for m in server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def translate(server: Server, version: int = 0, text: str = PAIRS[0][0]) -> pb.TranslateResponse:
    return server.stub.Translate(pb.TranslateRequest(text=text, version=version), timeout=60)


def refusal(server: Server, version: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        translate(server, version)
    return caught.value


# -- 1. pins --------------------------------------------------------------------------------------

def test_pinning_an_unchecked_version_gates_it_and_never_changes_the_default(scratch):
    s = Server(scratch, "--reload-interval", "0")
    try:
        publish(scratch, "tiny", scratch / "tiny" / "1")
        assert translate(s).version == 1
        pinned = translate(s, version=2)
        assert (pinned.version, pinned.translation) == (2, PAIRS[0][1])
        assert translate(s).version == 1, "a pin changed the default"
        listed = {m.version: m for m in s.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        assert (listed[1].version_state, listed[1].default_version) == (State.VERSION_STATE_SERVING, True)
        assert (listed[2].version_state, listed[2].default_version) == (State.VERSION_STATE_STANDBY, False)
        assert "probes identical" in listed[2].reason
        # The reloader, not the pin, promotes it (at its next look: here, SIGHUP).
        s.process.send_signal(signal.SIGHUP)
        wait_for(lambda: states(s).get(2, (0,))[0] == State.VERSION_STATE_SERVING)
        assert translate(s).version == 2
    finally:
        assert s.stop() == 0
    records = [json.loads(line) for line in s.process.stderr.read().splitlines()]
    assert any(r.get("event") == "accepted" and r.get("version") == 2 for r in records)


def test_pinning_a_rejected_version_answers_failed_precondition_and_changes_nothing(scratch):
    s = Server(scratch, "--reload-interval", "0")
    try:
        publish(scratch, "tiny", scratch / "tiny" / "1", wrong_probes)
        error = refusal(s, 2)  # never checked yet: the pin checks it, and it fails
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rejected" in error.details() and "probes differ" in error.details()
        assert refusal(s, 2).code() == grpc.StatusCode.FAILED_PRECONDITION  # remembered
        assert translate(s).version == 1
        assert states(s) == {1: (State.VERSION_STATE_SERVING, states(s)[1][1]),
                             2: (State.VERSION_STATE_REJECTED, states(s)[2][1])}
        assert "probes differ" in states(s)[2][1]
    finally:
        assert s.stop() == 0


# -- 2. restarts ----------------------------------------------------------------------------------

def test_a_restart_serves_what_the_running_server_chose(scratch, worse_version):
    """Versions rejected while serving (worse chrF, wrong probes) are rejected again at start-up,
    and the server serves the version the running server was serving: start-up replays the
    versions through the same gate, oldest first."""
    s = Server(scratch, "--reload-interval", "0.2")
    try:
        assert publish(scratch, "tiny", scratch / "tiny" / "1") == 2
        wait_for(lambda: states(s).get(2, (0,))[0] == State.VERSION_STATE_SERVING)
        assert publish(scratch, "tiny", worse_version) == 3
        assert publish(scratch, "tiny", scratch / "tiny" / "1", wrong_probes) == 4
        wait_for(lambda: states(s).get(4, (0,))[0] == State.VERSION_STATE_REJECTED)
        before = states(s)
    finally:
        assert s.stop() == 0
    assert before[3][0] == State.VERSION_STATE_REJECTED and "chrF" in before[3][1]

    again = Server(scratch)
    try:
        after = states(again)
        assert translate(again).version == 2
        assert after[2][0] == State.VERSION_STATE_SERVING
        assert after[3][0] == State.VERSION_STATE_REJECTED and "chrF" in after[3][1]
        assert after[4][0] == State.VERSION_STATE_REJECTED and "probes differ" in after[4][1]
        assert again.started["models"] == ["tiny/2"]
    finally:
        assert again.stop() == 0


# -- 3. versions that cannot load ------------------------------------------------------------------

def test_an_unloadable_version_is_rejected_and_blocks_nothing(scratch):
    s = Server(scratch, "--reload-interval", "0.2")
    try:
        assert publish(scratch, "tiny", scratch / "tiny" / "1", unloadable) == 2
        wait_for(lambda: states(s).get(2, (0,))[0] == State.VERSION_STATE_REJECTED)
        assert "cannot be loaded" in states(s)[2][1]
        assert refusal(s, 2).code() == grpc.StatusCode.FAILED_PRECONDITION
        assert publish(scratch, "tiny", scratch / "tiny" / "1") == 3  # a good one after it
        wait_for(lambda: states(s).get(3, (0,))[0] == State.VERSION_STATE_SERVING)
        assert translate(s).version == 3
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.process.stderr.read()  # no failing look at the repository, every interval


def test_a_restart_with_an_unloadable_newest_version_serves_the_best_older_one(scratch):
    publish(scratch, "tiny", scratch / "tiny" / "1", unloadable)
    s = Server(scratch)
    try:
        assert translate(s).version == 1
        assert states(s)[2][0] == State.VERSION_STATE_REJECTED
    finally:
        assert s.stop() == 0


# -- 4. and 5. malformed messages -----------------------------------------------------------------

MALFORMED = [b"\xff\xff\xff\xff", b"\x0a\x64abc", b"\x0a\x03\xff\xfeA"]  # garbage, truncated, bad UTF-8


@pytest.fixture(scope="module")
def server(service_repository):
    s = Server(service_repository)
    yield s
    assert s.stop() == 0


TRANSLATE, BATCH = "/rosetta.v1.Translator/Translate", "/rosetta.v1.Translator/TranslateBatch"


@pytest.mark.parametrize("method, payload", [(m, p) for m in (TRANSLATE, BATCH) for p in MALFORMED]
                         + [(m, p) for m in ("/rosetta.v1.Translator/ListModels", "/grpc.health.v1.Health/Check")
                            for p in MALFORMED[:2]])  # (no string fields to hold bad UTF-8)
def test_malformed_request_bytes_answer_invalid_argument(server, method, payload):
    with pytest.raises(grpc.RpcError) as caught:
        server.channel.unary_unary(method)(payload, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in caught.value.details()
    assert translate(server).translation == PAIRS[0][1]


def test_malformed_messages_to_the_standard_streaming_services_answer_invalid_argument(server):
    watch = server.channel.unary_stream("/grpc.health.v1.Health/Watch")(MALFORMED[0], timeout=10)
    reflection = server.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
        iter([MALFORMED[0]]), timeout=10)
    for call in (watch, reflection):
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_requests_are_logged_in_one_quiet_line(service_repository):
    s = Server(service_repository)
    try:
        with pytest.raises(grpc.RpcError):
            s.channel.unary_unary(TRANSLATE)(MALFORMED[0], timeout=10)
    finally:
        assert s.stop() == 0
    log = s.process.stderr.read()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "malformed" in line]) == 1


def test_a_malformed_stream_message_ends_the_stream_with_invalid_argument(server):
    """Items before the bad message are answered; the stream then ends with INVALID_ARGUMENT
    naming the message (it has no readable id to answer it by)."""
    good = [pb.TranslateStreamRequest(id=f"r{i}", request=pb.TranslateRequest(text=PAIRS[i][0])).SerializeToString()
            for i in range(2)]
    call = server.channel.stream_stream("/rosetta.v1.Translator/TranslateStream")(
        iter([good[0], MALFORMED[0], good[1]]), timeout=15)
    answers = []
    with pytest.raises(grpc.RpcError) as caught:
        for answer in call:
            answers.append(pb.TranslateStreamResponse.FromString(answer))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "message 2" in caught.value.details()
    assert [(a.id, a.response.translation) for a in answers] == [("r0", PAIRS[0][1])]


def test_a_stream_ends_on_the_server_when_its_client_cancels(server):
    """The server's side of the call ends (it is counted in the metrics) although the client never
    half-closed. (Its code is CANCELLED or OK: gRPC may show the server a cancelled call's
    requests as simply ended.)"""
    release = threading.Event()

    def requests():
        yield pb.TranslateStreamRequest(id="a", request=pb.TranslateRequest(text=PAIRS[0][0]))
        release.wait(60)

    def ended() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.started['metrics_port']}/metrics", timeout=10) as page:
            return sum(float(line.split()[1]) for line in page.read().decode().splitlines()
                       if line.startswith("rosetta_requests_total{") and 'method="TranslateStream"' in line)

    before = ended()
    call = server.stub.TranslateStream(requests(), timeout=60)
    assert next(call).response.translation == PAIRS[0][1]
    call.cancel()
    wait_for(lambda: ended() > before, 30)
    release.set()


def test_open_streams_neither_outlive_their_client_nor_hold_up_shutdown(service_repository):
    """A client that keeps its stream open without sending: SIGTERM still exits at once, with 0,
    well inside the grace period, and the client learns the server is going away."""
    s = Server(service_repository, "--grace-seconds", "30")
    release = threading.Event()

    def requests():
        yield pb.TranslateStreamRequest(id="a", request=pb.TranslateRequest(text=PAIRS[0][0]))
        release.wait(60)

    call = s.stub.TranslateStream(requests(), timeout=60)
    first = next(call)
    assert first.response.translation == PAIRS[0][1]
    started = time.monotonic()
    s.process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert s.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 5
    release.set()
    s.channel.close()


# -- 6. requests larger than the queue -------------------------------------------------------------

def test_a_request_larger_than_the_queue_is_invalid_argument_not_retry_later(service_repository):
    s = Server(service_repository, "--max-queue-sentences", "4")
    try:
        texts = [f"{PAIRS[0][0]} {PAIRS[1][0]}"] * 3  # 6 sentences on an idle server whose queue holds 4
        for _ in range(2):  # every time, and nothing about "retry later"
            with pytest.raises(grpc.RpcError) as caught:
                s.stub.TranslateBatch(pb.TranslateBatchRequest(texts=texts), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "6 sentences" in caught.value.details() and "at most 4" in caught.value.details()
            assert "retry" not in caught.value.details()
        assert translate(s).translation == PAIRS[0][1]
    finally:
        assert s.stop() == 0


# -- 7. signals during start-up --------------------------------------------------------------------

def slow_start(repository: Path, tmp_path: Path) -> subprocess.Popen:
    """A server with several models to load and gate, stopped at its 'listening' line (loading)."""
    slow = tmp_path / "slow"
    for n in range(4):
        shutil.copytree(repository / "tiny", slow / f"tiny-{n}")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--repository", str(slow), "--port", "0", "--device", "cpu",
         "--threads", "1", "--metrics-port", "-1", "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        line = process.stderr.readline()
        assert line, "the server exited before listening"
        if json.loads(line).get("event") == "listening":
            return process


@pytest.mark.parametrize("signal_", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_server_code_is_still_importing_is_handled(scratch, signal_):
    """0.2 s after the process starts it is importing gRPC and ONNX Runtime: SIGTERM then stops it
    with exit 0, SIGHUP leaves it to serve."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--repository", str(scratch), "--port", "0", "--device", "cpu",
         "--threads", "1", "--metrics-port", "-1", "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        assert process.poll() is None
        process.send_signal(signal_)
        if signal_ == signal.SIGTERM:
            assert process.wait(timeout=60) == 0
            assert "serving" not in process.stdout.read() and "stopped" in process.stderr.read()
        else:
            assert json.loads(process.stdout.readline())["event"] == "serving"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    finally:
        process.kill()


def test_sigterm_during_start_up_stops_gracefully(scratch, tmp_path):
    process = slow_start(scratch, tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopped" in process.stderr.read()


def test_sighup_during_start_up_is_harmless(scratch, tmp_path):
    process = slow_start(scratch, tmp_path)
    try:
        process.send_signal(signal.SIGHUP)
        serving = json.loads(process.stdout.readline())
        assert serving["event"] == "serving" and len(serving["models"]) == 4
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
