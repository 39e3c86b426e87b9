"""Head-of-line blocking: how long a short request waits behind long ones (the engine issue's measure).

    .venv/bin/python bench/head_of_line.py                  # the committed default model, beam 4
    .venv/bin/python bench/head_of_line.py --long 96 --words 35 --repeats 12

A real `rosetta-serve` on the newest committed version, with its default settings. First the
short text alone, `--repeats` times one after another. Then `--long` long sentences (test-split
sources of about `--words` words each; `make data` writes the split) are sent as concurrent
`Translate` calls and, 0.3 s later, while they decode, the short text once more, with a health
probe running throughout; `--repeats` such rounds. Reported: the short call's latency alone and
under load (median, max; a call that ended after its round's long sentences does not count as
under load), how long the long sentences took, and health's worst latency. Targets (engine
issue): short call under load <= 200 ms median; health within 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc

from grpc_speed import ServerProcess, health_probe, machine
from model.tsv import read_tsv
from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SHORT = "Open the file."


def long_sentences(test: Path, count: int, words: int) -> list[str]:
    """The `count` test sources closest to `words` words long (repeated if the split has fewer)."""
    sources = sorted({s for s, _ in read_tsv(test)[0]}, key=lambda s: (abs(len(s.split()) - words), s))
    return [sources[i % len(sources)] for i in range(count)]


async def short_calls(stub, repeats: int, until: asyncio.Event | None = None) -> list[tuple[float, float, float]]:
    """(start, end, seconds) of each short call, one after another, `repeats` times or until `until` is set."""
    calls = []
    while len(calls) < repeats and not (until and until.is_set()):
        started = time.perf_counter()
        await stub.Translate(pb.TranslateRequest(text=SHORT), timeout=120)
        ended = time.perf_counter()
        calls.append((started, ended, ended - started))
        await asyncio.sleep(0.05)
    return calls


async def under_load(stub, address: str, long: list[str], repeats: int) -> tuple[list[float], float, list[float]]:
    """One round: the long sentences in flight, `repeats` short calls meanwhile. Returns the short
    calls' seconds that fell wholly inside the round, the round's seconds, and health latencies."""
    done, long_done = asyncio.Event(), asyncio.Event()
    probe = asyncio.create_task(health_probe(address, done))
    started = time.perf_counter()
    load = asyncio.gather(*(stub.Translate(pb.TranslateRequest(text=t), timeout=600) for t in long))
    load.add_done_callback(lambda _: long_done.set())
    await asyncio.sleep(0.3)  # the long sentences are queued and decoding
    calls = await short_calls(stub, repeats, until=long_done)
    await load
    finished = time.perf_counter()
    done.set()
    return [s for _, end, s in calls if end < finished], finished - started, await probe


async def measure(address: str, long: list[str], repeats: int) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = translator_pb2_grpc.TranslatorStub(channel)
        await short_calls(stub, 2)  # warm-up
        alone = [s for _, _, s in await short_calls(stub, repeats)]
        loaded, rounds, health = [], [], []
        for _ in range(repeats):  # one short call per round, always at the same moment of it
            calls, seconds, probe = await under_load(stub, address, long, 1)
            loaded += calls
            rounds.append(seconds)
            health += probe
    return {
        "short_alone_ms": {"median": 1000 * statistics.median(alone), "max": 1000 * max(alone), "calls": len(alone)},
        "short_under_load_ms": {"median": 1000 * statistics.median(loaded) if loaded else None,
                                "max": 1000 * max(loaded) if loaded else None, "calls": len(loaded)},
        "long_sentences": len(long), "rounds": len(rounds), "long_seconds_per_round": statistics.median(rounds),
        "health_worst_ms": 1000 * max(health) if health else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    parser.add_argument("--long", type=int, default=96, help="long sentences in flight")
    parser.add_argument("--words", type=int, default=35, help="about how many words each long sentence has")
    parser.add_argument("--repeats", type=int, default=12, help="short calls alone, and under load")
    parser.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default)")
    parser.add_argument("--server-args", default="", help="more rosetta-serve flags, e.g. '--max-rows 256'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "head-of-line-latest.json")
    args = parser.parse_args(argv)
    if not args.test.is_file():
        print(f"head_of_line: {args.test} is missing: run `make data` first", file=sys.stderr)
        return 2
    long = long_sentences(args.test, args.long, args.words)
    server = ServerProcess(args.repository, args.threads, args.server_args.split())
    try:
        result = asyncio.run(measure(server.address, long, args.repeats))
    finally:
        server.stop()
    result.update({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "short_text": SHORT,
                   "server_args": args.server_args,
                   "long_words_mean": statistics.mean(len(s.split()) for s in long)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    alone, loaded = result["short_alone_ms"], result["short_under_load_ms"]
    print(f"short call alone: median {alone['median']:.0f} ms, max {alone['max']:.0f} ms ({alone['calls']} calls)")
    if loaded["calls"]:
        print(f"short call while {len(long)} long sentences (~{result['long_words_mean']:.0f} words) decode: "
              f"median {loaded['median']:.0f} ms, max {loaded['max']:.0f} ms ({loaded['calls']} calls; target <= 200 ms)")
    else:
        print("no short call both started and ended while the long sentences decoded")
    print(f"{result['rounds']} rounds of {len(long)} long sentences, {result['long_seconds_per_round']:.1f} s each "
          f"(median); health worst {result['health_worst_ms']:.0f} ms (target <= 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
