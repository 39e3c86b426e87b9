"""One decoder step and one encoder call of two or more model versions, timed side by side.

    .venv/bin/python bench/step_speed.py OLD_VERSION_DIR NEW_VERSION_DIR
    .venv/bin/python bench/step_speed.py A B --threads 2 --cases 1x1:16:25 16x4:96:96

The per-change figures of docs/benchmarks.md: a graph change is judged by its step, on the same
inputs, the versions taking turns (the machine drifts; a ratio from one run holds). A case
SOURCESxBEAMS:CACHED:SOURCE_LENGTH is that many sources of that many tokens, each with that many
rows (beams) reading it, every row with CACHED positions in its cache (random values: the
step's cost does not depend on them). Reported: each version's best time over `--rounds`
rounds, and its ratio to the first version's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from server.runtime import OnnxGraphs, SessionConfig
from server.runtime.graph_io import QUERY_GROUP, candidates_for, own_sources, query_width

DEFAULT_CASES = ["1x1:16:25", "32x1:16:25", "32x4:32:25", "16x4:48:48", "16x4:96:96"]


def parse_case(text: str) -> tuple[int, int, int, int]:
    """'SOURCESxBEAMS:CACHED:SOURCE_LENGTH' -> (sources, beams, cached, source_length)."""
    shape, cached, source_length = text.split(":")
    sources, beams = shape.split("x")
    if not 1 <= int(beams) <= QUERY_GROUP:
        raise ValueError(f"{text}: beams must be 1 to {QUERY_GROUP} (one cross-attention entry per source)")
    return int(sources), int(beams), int(cached), int(source_length)


def seconds_per_call(call, repeats: int) -> float:
    """`call`'s mean time over `repeats` calls, after two warm-up calls."""
    call(), call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def step_call(graphs: OnnxGraphs, case: tuple[int, int, int, int], rng: np.random.Generator):
    """A decoder step of `graphs` on one case's random inputs, as a call without arguments."""
    sources, beams, cached, source_length = case
    c, rows = graphs.config, sources * beams
    source = random_sources(graphs, sources, source_length, rng)
    cross_keys, cross_values = graphs.encode(source)
    cache = [[rng.random((rows, c.heads, cached, c.head_dim), dtype=np.float32) for _ in range(c.decoder_layers)]
             for _ in range(2)]
    # As the engine lays them out: a sentence's beams side by side in its source's entry, the grid
    # at least query_width wide (greedy rows each read their own source).
    grid = np.zeros((sources, query_width(beams)), np.int64)
    grid[:, :beams] = np.arange(rows).reshape(sources, beams)
    slots = np.stack([np.arange(rows) // beams, np.arange(rows) % beams], axis=1)
    query = own_sources(rows) if beams == 1 else (grid, slots)
    tokens, positions = np.full((rows, 1), 5, np.int64), np.full(rows, cached // 2, np.int64)
    return lambda: graphs.step(tokens, positions, np.ones(rows, bool), cross_keys, cross_values,
                               source != c.pad_id, *cache, candidates=candidates_for(beams), query=query)


def encode_call(graphs: OnnxGraphs, sources: int, source_length: int, rng: np.random.Generator):
    """An encoder call of `graphs` on random sources, as a call without arguments."""
    source = random_sources(graphs, sources, source_length, rng)
    return lambda: graphs.encode(source)


def random_sources(graphs: OnnxGraphs, sources: int, source_length: int, rng: np.random.Generator) -> np.ndarray:
    """`sources` random id sequences of `source_length` tokens, each ending in EOS."""
    source = rng.integers(4, graphs.config.vocab_size, (sources, source_length))
    source[:, -1] = graphs.config.eos_id
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", type=Path, nargs="+", help="model version directories; the first is the baseline")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="SOURCESxBEAMS:CACHED:SOURCE_LENGTH")
    parser.add_argument("--encode", nargs="*", default=["1x25", "32x25"], help="SOURCESxSOURCE_LENGTH (none: no encoder)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the one stream")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    config = SessionConfig(device="cpu", streams=1, intra_op_threads=args.threads)
    graphs = [OnnxGraphs(v, config) for v in args.versions]
    try:
        steps = [(f"step {text}", parse_case(text)) for text in args.cases]
    except ValueError as e:
        parser.error(str(e))
    encodes = [(f"encode {text}", tuple(map(int, text.split("x")))) for text in args.encode]
    print("| case | " + " | ".join(str(v) for v in args.versions) + " |")
    print("|---" * (len(graphs) + 1) + "|")
    for label, case in steps + encodes:
        # the same inputs for every version
        calls = [step_call(g, case, np.random.default_rng(0)) if label.startswith("step")
                 else encode_call(g, *case, np.random.default_rng(0)) for g in graphs]
        repeats = 200 if case[0] * (case[1] if label.startswith("step") else 1) == 1 else 15
        figures: list[list[float]] = [[] for _ in graphs]
        for _ in range(args.rounds):  # the versions take turns, round by round
            for figure, call in zip(figures, calls):
                figure.append(seconds_per_call(call, repeats))
        best = [min(f) * 1e3 for f in figures]
        cells = [f"{best[0]:.3f} ms"] + [f"{b:.3f} ms ({b / best[0]:.2f}x)" for b in best[1:]]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
