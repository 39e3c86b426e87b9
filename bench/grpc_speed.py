"""End-to-end speed of the gRPC service against the runtime in-process, on the same texts.

    .venv/bin/python bench/grpc_speed.py                    # default model, 1/8/32/64 clients
    .venv/bin/python bench/grpc_speed.py --clients 1 32 --texts 128
    python bench/grpc_speed.py --device cuda --clients 256 --batch 256 --texts 1897   # a GPU machine

The texts are the first `--texts` sources of the test split (`make data` writes it). The
runtime translates them in-process, through the same text path as the service (sentences split,
suspected omissions translated again), in two ways:
- static batches (the engine issue's baseline): every sentence of a round sorted by length and
  cut into batches of `--batch`, each batch decoded to its end before the next starts: whole
  batches, as the runtime decoded before step-level batching;
- continuous (the stricter ceiling): every sentence submitted at once, shortest first, at most
  `--batch` in flight, a finished one's rows taken by the next at once: no network, no
  protobuf, perfect length grouping.
And a real `rosetta-serve` process serves the same model version on the same cores: for each
client count that many concurrent clients (coroutines on one grpc.aio channel each) send one
`Translate` call per text until all are done; the server's admission gathers them. Meanwhile a
probe asks the health service every 50 ms (the event loop must stay free while batches
decode). Reported per client count: texts/s, its ratio to both in-process figures, latency
p50/p95/p99, errors, the health probe's worst latency, and the server's resident memory while
the clients are served (sampled every 100 ms: median and maximum). Also the server's time from
start to the "serving" line (health SERVING) and its resident memory after the runs (current
and peak).

Both sides decode with the service's default options (beam 4). The client runs in this
process on the same machine, so it takes CPU from the server: the ratios include that cost.
Each measurement is the median of `--repeats` passes after one warm-up pass, and the passes take
turns: each round runs both in-process passes, then one pass per client count, so that the
machine's drift (tens of percent within minutes on shared machines) falls on both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model.search import DEFAULT_BEAM_SIZE, DecodeOptions
from model.tsv import read_tsv
from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc
from server.runtime import SessionConfig, Translator, decoding_options, run_jobs, versions

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, str | int | None]:
    """The CPU, cores and Python that the figures were measured with."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def static_batches(translator: Translator, options: DecodeOptions,
                   batch: int) -> Callable[[Sequence[Sequence[int]]], list]:
    """A decode function for run_jobs that decodes whole batches: the sentences sorted by length,
    cut into batches of `batch`, each decoded to its end before the next is admitted."""
    def decode(ids: Sequence[Sequence[int]]) -> list:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list = [None] * len(ids)
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            for i, hypotheses in zip(chunk, translator.translate_ids([ids[i] for i in chunk], options,
                                                                     max_batch=batch)):
                out[i] = hypotheses
        return out
    return decode


class InProcess:
    """The runtime called directly through the service's text path, two ways: static batches
    and continuously (the module's docstring)."""

    def __init__(self, version_dir: Path, texts: list[str], *, device: str, threads: int, batch: int,
                 cache: str = "resizing") -> None:
        self.translator = Translator(version_dir, SessionConfig(device=device, intra_op_threads=threads,
                                                                static_cache=cache == "static"))
        self.texts, self.batch = texts, batch
        self.options = DecodeOptions(beam_size=DEFAULT_BEAM_SIZE)
        self.passes: dict[str, Callable[[], None]] = {"static": self._static, "continuous": self._continuous}

    def warm_up(self) -> None:
        self.translator.translate_texts(self.texts[: self.batch], self.options, batch_size=self.batch)

    def seconds(self, name: str) -> float:
        """One timed pass over every text."""
        started = time.perf_counter()
        self.passes[name]()
        return time.perf_counter() - started

    def _static(self) -> None:
        decoding = decoding_options(self.options)
        run_jobs([self.translator.text_job(text, n_best=decoding.n_best) for text in self.texts],
                 static_batches(self.translator, decoding, self.batch))

    def _continuous(self) -> None:
        self.translator.translate_texts(self.texts, self.options, batch_size=self.batch)


class ServerProcess:
    """`rosetta-serve` on a free port; how long it took to serve, and its memory."""

    def __init__(self, repository: Path, threads: int, extra: list[str] = (), device: str = "cpu") -> None:
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.main", "--repository", str(repository), "--port", "0",
             "--metrics-port", "-1", "--device", device, "--threads", str(threads), "--log-level", "warning", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("rosetta-serve did not start (its log is above)")
        self.seconds_to_serving = time.perf_counter() - started
        self.address = f"127.0.0.1:{json.loads(line)['port']}"

    def memory_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status)
        return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def memory_probe(server: ServerProcess, done: asyncio.Event) -> list[float]:
    """The server's resident memory (MB) every 100 ms until `done`."""
    samples = []
    while not done.is_set():
        samples.append(server.memory_mb()["rss_mb"])
        await asyncio.sleep(0.1)
    return samples


async def health_probe(address: str, done: asyncio.Event) -> list[float]:
    """Latencies of health checks every 50 ms until `done`."""
    latencies = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not done.is_set():
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    return latencies


async def clients_pass(server: ServerProcess, texts: list[str],
                       clients: int) -> tuple[float, list[float], int, list[float], list[float]]:
    """`clients` concurrent callers share the texts; returns seconds, latencies, errors, health
    latencies and the server's resident memory samples."""
    address = server.address
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        async with grpc.aio.insecure_channel(address) as channel:
            stub = translator_pb2_grpc.TranslatorStub(channel)
            while not queue.empty():
                text = queue.get_nowait()
                started = time.perf_counter()
                try:
                    await stub.Translate(pb.TranslateRequest(text=text), timeout=120)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1

    done = asyncio.Event()
    probe = asyncio.create_task(health_probe(address, done))
    memory = asyncio.create_task(memory_probe(server, done))
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    done.set()
    return seconds, latencies, errors, await probe, await memory


def service_row(clients: int, passes: list[tuple], texts: int) -> dict:
    """One client count's figures from its passes (clients_pass's results)."""
    seconds = [p[0] for p in passes]
    latencies = [t for p in passes for t in p[1]]
    health = [t for p in passes for t in p[3]]
    memory = [m for p in passes for m in p[4]]
    errors = sum(p[2] for p in passes)
    return {"clients": clients, "texts_per_s": texts / statistics.median(seconds),
            "p50_ms": 1000 * percentile(latencies, 50), "p95_ms": 1000 * percentile(latencies, 95),
            "p99_ms": 1000 * percentile(latencies, 99), "errors": errors, "calls": len(latencies) + errors,
            "health_max_ms": 1000 * max(health), "health_checks": len(health),
            "rss_under_load_median_mb": statistics.median(memory), "rss_under_load_max_mb": max(memory)}


def measure(in_process: InProcess, server: ServerProcess, texts: list[str], client_counts: list[int],
            repeats: int) -> tuple[dict[str, float], list[dict]]:
    """In-process texts/s per way and the service's rows, their passes taking turns round by
    round (in-process, then each client count), so that a machine whose speed drifts during the
    run (shared machines do, by tens of percent in minutes) moves both sides alike."""
    in_process.warm_up()
    for clients in client_counts:
        asyncio.run(clients_pass(server, texts[: max(clients, 16)], clients))
    baseline: dict[str, list[float]] = {name: [] for name in in_process.passes}
    passes: dict[int, list[tuple]] = {clients: [] for clients in client_counts}
    for round_ in range(repeats):
        print(f"round {round_ + 1} of {repeats}: in-process, then {client_counts} clients", file=sys.stderr)
        for name in in_process.passes:
            baseline[name].append(in_process.seconds(name))
        for clients in client_counts:
            passes[clients].append(asyncio.run(clients_pass(server, texts, clients)))
    rates = {name: len(texts) / statistics.median(seconds) for name, seconds in baseline.items()}
    rows = [service_row(clients, passes[clients], len(texts)) for clients in client_counts]
    for row in rows:
        row["ratio_to_static"] = row["texts_per_s"] / rates["static"]
        row["ratio_to_continuous"] = row["texts_per_s"] / rates["continuous"]
    return rates, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="en-es")
    parser.add_argument("--test", type=Path, default=ROOT / "data" / "en-es" / "test.tsv")
    parser.add_argument("--texts", type=int, default=256, help="texts per pass")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch", type=int, default=32, help="in-process batch size")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads, both sides (default 0: each side's own default for these cores: "
                             "in-process one single-threaded stream per core, the server one per concurrent batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both sides")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "grpc-latest.json")
    parser.add_argument("--server-args", default="", help="more rosetta-serve flags, e.g. '--streams 1'")
    parser.add_argument("--cache", choices=("resizing", "static"), default="resizing",
                        help="both sides' engine: rosetta-serve --cache, SessionConfig.static_cache in-process")
    args = parser.parse_args(argv)

    if not args.test.exists():
        parser.error(f"{args.test} is missing: run `make data` first")
    pairs, _ = read_tsv(args.test, strict=True)
    texts = [source for source, _ in pairs][: args.texts]
    model_dir = args.repository / args.model
    version_dir = model_dir / str(versions(model_dir)[-1])

    print(f"{len(texts)} texts, batch {args.batch}, beam {DEFAULT_BEAM_SIZE}, {args.threads} threads, "
          f"{args.cache} cache",
          file=sys.stderr)
    in_process = InProcess(version_dir, texts, device=args.device, threads=args.threads, batch=args.batch,
                           cache=args.cache)
    server = ServerProcess(args.repository, args.threads, ["--cache", args.cache, *args.server_args.split()],
                           args.device)
    try:
        baseline, rows = measure(in_process, server, texts, args.clients, args.repeats)
        memory = server.memory_mb()
    finally:
        server.stop()

    result = {
        "model": str(version_dir.relative_to(args.repository)), "texts": len(texts), "beam_size": DEFAULT_BEAM_SIZE,
        "device": args.device, "threads": args.threads, "cache": args.cache, "server_args": args.server_args,
        "in_process_batch": args.batch,
        "in_process_static_texts_per_s": baseline["static"],
        "in_process_continuous_texts_per_s": baseline["continuous"],
        "seconds_to_serving": server.seconds_to_serving, **memory, "service": rows,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['model']}, {len(texts)} texts, beam {DEFAULT_BEAM_SIZE}, {args.threads} threads; "
          f"in-process (batch {args.batch}): static batches {baseline['static']:.1f} texts/s, "
          f"continuous {baseline['continuous']:.1f} texts/s")
    print(f"time to SERVING {server.seconds_to_serving:.2f} s; server RSS {memory['rss_mb']:.0f} MB "
          f"(peak {memory['peak_rss_mb']:.0f} MB)")
    print(f"{'clients':>7} {'texts/s':>8} {'vs static':>9} {'vs continuous':>13} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6} {'health max ms':>13} {'RSS MB (median/max)':>19}")
    for r in rows:
        print(f"{r['clients']:>7} {r['texts_per_s']:>8.1f} {r['ratio_to_static']:>9.2f} "
              f"{r['ratio_to_continuous']:>13.2f} {r['p50_ms']:>8.0f} "
              f"{r['p95_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['errors']:>6} {r['health_max_ms']:>13.1f} "
              f"{r['rss_under_load_median_mb']:>9.0f}/{r['rss_under_load_max_mb']:.0f}")
    print(f"results: {args.output}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
