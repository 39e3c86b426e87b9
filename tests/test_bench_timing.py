"""bench/decode_speed.py's timing: the engines' passes take turns, so a drift of the machine's
speed falls on all of them alike (docs/benchmarks.md); a disturbed pass is repeated; a worker
that fails reports its error and the others go on."""

from __future__ import annotations

import pytest

from bench import decode_speed
from bench.decode_speed import WorkerFailed, time_interleaved

WORKLOAD = {"inputs": {"target_length": 24}, "timing": {"timed_reps": 3},
            "modes": [{"name": "greedy_b32", "sentences": 256}, {"name": "greedy_b1", "sentences": 32}]}


class FakeWorker:
    """Answers passes in a fixed number of seconds, logging each; optionally disturbed or failing."""

    def __init__(self, name: str, log: list, seconds: float, disturbed: int = 0, fail_at: int | None = None) -> None:
        self.name, self.log, self.seconds, self.disturbed, self.fail_at = name, log, seconds, disturbed, fail_at
        self.passes, self.closed = 0, False

    def ask(self, request: dict) -> dict:
        if request.get("rss"):
            return {"peak_rss_mb": 100.0}
        self.passes += 1
        if self.passes == self.fail_at:
            raise WorkerFailed("RuntimeError: out of memory")
        self.log.append((self.name, request["mode"], request["warmup"]))
        others = 1.0 if self.disturbed and not request["warmup"] and self.passes % 2 == 0 else 0.0
        self.disturbed -= others > 0
        return {"seconds": self.seconds, "others": others}

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    monkeypatch.setattr(decode_speed, "SETTLE_SECONDS", 0.0)


def test_each_round_gives_every_engine_one_pass_in_an_order_rotated_every_round():
    log: list = []
    workers = {name: FakeWorker(name, log, seconds) for name, seconds in (("a", 1.0), ("b", 2.0), ("c", 4.0))}
    results = time_interleaved(workers, WORKLOAD)
    first_mode = [(name, warmup) for name, mode, warmup in log if mode == "greedy_b32"]
    assert first_mode == [("a", True), ("b", True), ("c", True),
                          ("a", False), ("b", False), ("c", False),
                          ("b", False), ("c", False), ("a", False),
                          ("c", False), ("a", False), ("b", False)]
    assert [mode for _, mode, _ in log] == ["greedy_b32"] * 12 + ["greedy_b1"] * 12  # a mode at a time
    assert results["b"]["greedy_b32"]["tokens_per_s"] == 256 * 24 / 2.0
    assert results["c"]["greedy_b1"]["ms_per_sentence"] == 1000 * 4.0 / 32
    assert all(w.closed and results[n]["peak_rss_mb"] == 100.0 for n, w in workers.items())


def test_a_disturbed_pass_is_repeated_and_a_failed_worker_reports_its_error_while_the_others_go_on():
    log: list = []
    workers = {"steady": FakeWorker("steady", log, 1.0), "noisy": FakeWorker("noisy", log, 1.0, disturbed=1),
               "failing": FakeWorker("failing", log, 1.0, fail_at=3)}
    results = time_interleaved(workers, WORKLOAD)
    assert results["failing"] == {"error": ["RuntimeError: out of memory"]} and workers["failing"].closed
    noisy_timed = [1 for name, mode, warmup in log if name == "noisy" and mode == "greedy_b32" and not warmup]
    assert len(noisy_timed) == 4  # its disturbed pass ran again
    assert results["noisy"]["greedy_b32"]["other_processes_cores"] == [0.0, 0.0, 0.0]
    assert not results["noisy"]["greedy_b32"]["disturbed"]
    assert set(results["steady"]) == {"greedy_b32", "greedy_b1", "peak_rss_mb"}
