"""An outside-style chaos run against a real `rosetta-serve` process.

Clients translate without pause while good, corrupt, unloadable, worse and wrongly probed
versions are published; other clients pin every published version, send malformed bytes and
keep streams open; SIGHUPs arrive throughout; then SIGTERM with calls in flight. What must hold:
every valid unpinned call succeeds with the right translation; each pin is answered as its
version deserves; each version ends in its right state; the server exits 0.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from collections import Counter

import grpc
import pytest

from rosetta.v1 import translator_pb2 as pb
from tests.builders import tiny_pairs
from tests.conftest import Server, wait_for
from tests.versions import corrupt, publish, unloadable, wrong_probes

pytestmark = pytest.mark.slow  # real server processes (pytest -m "not slow" skips them)

PAIRS = tiny_pairs()
State = pb.VersionState
GOOD, BAD = "good", "bad"


def states(server: Server) -> dict[int, tuple[int, str]]:
    return {m.version: (m.version_state, m.reason)
            for m in server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def test_versions_published_pinned_and_reloaded_under_load(tiny_version, worse_version, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(tiny_version, repository / "tiny" / "1")
    s = Server(repository, "--reload-interval", "0.3")
    published: dict[int, str] = {1: GOOD}
    stop = threading.Event()
    unpinned: list[tuple[str, int, bool]] = []  # (code, version, translation right)
    pinned: list[tuple[int, str, str]] = []  # (version, what it is, code)
    hostile: Counter = Counter()

    def translate_unpinned(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            source, target = rng.choice(PAIRS)
            try:
                answer = s.stub.Translate(pb.TranslateRequest(text=source), timeout=30)
                unpinned.append(("OK", answer.version, answer.translation == target))
            except grpc.RpcError as e:
                unpinned.append((e.code().name, 0, False))

    def pin(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            version, kind = rng.choice(sorted(published.items()))
            source, target = rng.choice(PAIRS)
            try:
                answer = s.stub.Translate(pb.TranslateRequest(text=source, version=version), timeout=30)
                pinned.append((version, kind, "OK" if (answer.version, answer.translation) == (version, target)
                               else "WRONG"))
            except grpc.RpcError as e:
                pinned.append((version, kind, e.code().name))

    def malformed() -> None:
        raw = s.channel.unary_unary("/rosetta.v1.Translator/Translate")
        while not stop.wait(0.05):
            try:
                raw(b"\xff\xff\xff\xff", timeout=10)
            except grpc.RpcError as e:
                hostile[e.code().name] += 1

    threads = ([threading.Thread(target=translate_unpinned, args=(k,)) for k in range(4)]
               + [threading.Thread(target=pin, args=(k,)) for k in range(2)] + [threading.Thread(target=malformed)])
    for t in threads:
        t.start()
    try:
        published[publish(repository, "tiny", tiny_version)] = GOOD  # 2
        wait_for(lambda: states(s).get(2, (0,))[0] == State.VERSION_STATE_SERVING, 60)
        for change in (corrupt, unloadable, wrong_probes, None):  # 3, 4, 5, then 6: worse
            number = (publish(repository, "tiny", tiny_version, change) if change else
                      publish(repository, "tiny", worse_version))
            published[number] = BAD
            s.process.send_signal(signal.SIGHUP)
            time.sleep(0.4)
        published[publish(repository, "tiny", tiny_version)] = GOOD  # 7
        for _ in range(5):
            s.process.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        wait_for(lambda: states(s).get(7, (0,))[0] == State.VERSION_STATE_SERVING, 60)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()

    final = states(s)
    in_flight = s.stub.TranslateBatch.future(pb.TranslateBatchRequest(
        texts=[p for p, _ in PAIRS] * 4, options=pb.DecodingOptions(beam_size=8, min_length=30)), timeout=60)
    time.sleep(0.2)
    s.process.send_signal(signal.SIGTERM)
    assert len(in_flight.result().translations) == len(PAIRS) * 4
    assert s.process.wait(timeout=30) == 0
    s.channel.close()

    assert len(unpinned) > 100 and Counter(code for code, _, _ in unpinned) == {"OK": len(unpinned)}
    assert all(right for _, _, right in unpinned)
    assert {v for _, v, _ in unpinned} <= {1, 2, 7} and unpinned[-1][1] == 7
    outcomes = Counter((kind, code) for _, kind, code in pinned)
    assert set(outcomes) <= {(GOOD, "OK"), (BAD, "FAILED_PRECONDITION")}, outcomes
    assert outcomes[GOOD, "OK"] > 0 and outcomes[BAD, "FAILED_PRECONDITION"] > 0
    assert set(hostile) == {"INVALID_ARGUMENT"}

    assert final[7][0] == State.VERSION_STATE_SERVING
    assert {final[v][0] for v in (1, 2)} <= {State.VERSION_STATE_AVAILABLE, State.VERSION_STATE_STANDBY}
    for version, words in ((3, "checksum"), (4, "cannot be loaded"), (5, "probes differ"), (6, "chrF")):
        assert final[version][0] == State.VERSION_STATE_REJECTED and words in final[version][1], final[version]
