"""A decode loop's token at fixed shapes, inputs and outputs bound once: what the decoder step
and its cache append cost per bucket of rows, run plainly and captured as CUDA graphs. The first
measurement of the engine issue's GPU design (a preallocated cache written in place, I/O
binding, one captured graph per bucket).

    python bench/step_graph.py --device cuda --rows 1 32 256 1024 --beams 1 4
    .venv/bin/python bench/step_graph.py --rows 1 32        # CPU: the same binding, no capture

A bucket is two sessions whose symbolic dimensions (batch, sources, source_len, capacity,
query_group, candidates) are fixed (`create_session(dimensions=...)`), so that their shape
computations fold to constants and every node can stay on the GPU, which capture requires: the
decoder step, and the `append` graph (server/runtime/graphs.py) that writes the step's new keys
and values into the cache at each row's position, its output bound to the cache itself. Inputs
are device values made once and changed in place (`OrtValue.update_inplace`), outputs device
values made once. Each setting is checked before it is timed: the step's best tokens equal
`OnnxGraphs.step`'s on the same inputs (the runtime's step as it runs today), after its tokens
change in place (a captured graph replaying what it recorded would not follow), and after three
tokens of a loop, each append found in the cache where it belongs. Reported per bucket and
setting: ms per step alone, ms per token of the loop (tokens and positions in, step, append,
best tokens out, each waiting for its outputs as a decode loop does), generated tokens/s (one
token per row a step), or why the setting could not run (a failed capture names its cause).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from server.runtime import CUDA, OnnxGraphs, SessionConfig, create_session, versions
from server.runtime.graph_io import candidates_for, cache_names, own_sources, query_width
from server.runtime.graphs import append_graph
from server.runtime.static_cache import NUMPY_TYPES

ROOT = Path(__file__).resolve().parent.parent
# What ONNX Runtime raises when a session cannot be made or run (a capture that fails among them):
# its own exception classes, none of them a RuntimeError.
_ORT_ERRORS = tuple(getattr(ort_errors, name) for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel",
                                                           "EngineError", "RuntimeException", "InvalidProtobuf",
                                                           "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
                    if hasattr(ort_errors, name))


def bucket_inputs(graphs: OnnxGraphs, rows: int, beams: int, capacity: int, source_length: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A step's inputs for `rows` rows, `beams` to a sentence: real encoder outputs of random
    sources, a random cache with `capacity` columns of which each row uses half."""
    c, sources = graphs.config, rows // beams
    source = rng.integers(4, c.vocab_size, (sources, source_length))
    source[:, -1] = c.eos_id
    cross_keys, cross_values = graphs.encode(source)
    width = query_width(beams)
    grid = np.zeros((sources, width), np.int64)
    grid[:, :beams] = np.arange(rows).reshape(sources, beams)
    slots = np.stack([np.arange(rows) // beams, np.arange(rows) % beams], axis=1)
    query_grid, query_slots = own_sources(rows) if beams == 1 else (grid, slots)
    cache = [rng.standard_normal((rows, c.heads, capacity, c.head_dim)).astype(graphs.dtype)
             for _ in range(2 * c.decoder_layers)]
    feeds = {"tokens": rng.integers(4, c.vocab_size, (rows, 1)), "positions": np.full(rows, capacity // 2),
             "source_mask": source != c.pad_id, "eos_allowed": np.ones(rows, bool),
             "candidates": np.zeros(candidates_for(beams), np.int64), "query_grid": query_grid,
             "query_slots": query_slots}
    # With the cache on the device (SessionConfig.device_cache) the encoder's outputs are device values.
    host = [t.numpy() if isinstance(t, ort.OrtValue) else t for t in (*cross_keys, *cross_values)]
    feeds.update(zip(cache_names("cross", c.decoder_layers), host))
    feeds.update(zip(cache_names("cache", c.decoder_layers), cache))
    return feeds


def dimensions(feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """The step graph's symbolic dimensions (server/runtime/graph_io.py) at these inputs' sizes."""
    rows, _, capacity, _ = feeds["cache_key_0"].shape
    sources, source_length = feeds["source_mask"].shape
    return {"batch": rows, "capacity": capacity, "sources": sources, "source_len": source_length,
            "query_group": feeds["query_grid"].shape[1], "candidates": len(feeds["candidates"])}


class BoundStep:
    """A bucket's decoder step and cache append with their inputs and outputs bound once on the
    device: the step reads the cache, the append writes the step's new keys and values into it
    at each row's position, in place (server/runtime/graphs.py's `append` graph)."""

    def __init__(self, graphs: OnnxGraphs, feeds: dict[str, np.ndarray], *, cuda_graph: bool) -> None:
        config, layers = graphs.session_config, graphs.config.decoder_layers
        self.session = create_session(graphs.dir / graphs.manifest.graphs["decoder"], config, step=True,
                                      dimensions=dimensions(feeds), cuda_graph=cuda_graph)
        device = ("cuda", 0) if self.session.get_providers()[0] == CUDA else ("cpu", 0)
        # Copies: on the CPU a value made from an array shares its memory, and the caller's feeds
        # must not change when the bound inputs do.
        self.inputs = {name: ort.OrtValue.ortvalue_from_numpy(np.array(value, order="C"), *device)
                       for name, value in feeds.items()}
        rows, k = len(feeds["tokens"]), len(feeds["candidates"])
        _, heads, _, head_dim = feeds["cache_key_0"].shape
        types = {o.name: NUMPY_TYPES[o.type] for o in self.session.get_outputs()}
        shapes = {"top_log_probs": (rows, k), "top_ids": (rows, k)}
        shapes.update((name, (rows, heads, 1, head_dim)) for name in cache_names("new", layers))
        self.outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(shape, types[name], *device)
                        for name, shape in shapes.items()}
        self.binding = self.session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

        self.appender = create_session(append_graph(2 * layers, graphs.dtype), config, dimensions={"b": rows},
                                       cuda_graph=cuda_graph)
        self.append_binding = self.appender.io_binding()
        self.append_binding.bind_ortvalue_input("positions", self.inputs["positions"])
        for i, (cache, new) in enumerate(zip(cache_names("cache", layers), cache_names("new", layers))):
            self.append_binding.bind_ortvalue_input(f"x{i}", self.inputs[cache])
            self.append_binding.bind_ortvalue_input(f"n{i}", self.outputs[new])
            self.append_binding.bind_ortvalue_output(f"y{i}", self.inputs[cache])  # in place

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def append(self) -> None:
        self.appender.run_with_iobinding(self.append_binding)

    def update(self, name: str, value: np.ndarray) -> None:
        """Change an input in place: the bound buffer keeps its address."""
        self.inputs[name].update_inplace(np.ascontiguousarray(value))

    def top_ids(self) -> np.ndarray:
        """The best tokens of the last step, (rows, k): a copy, which the next step leaves alone."""
        return np.array(self.outputs["top_ids"].numpy())

    def token(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One token of a decode loop: this step's tokens and positions in, the step, its keys
        and values appended, the best tokens out."""
        self.update("tokens", tokens)
        self.update("positions", positions)
        self.run()
        self.append()
        return self.top_ids()


def reference_top_ids(graphs: OnnxGraphs, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The runtime's step (OnnxGraphs.step, dynamic shapes) on the same inputs."""
    layers = graphs.config.decoder_layers
    cross = [feeds[n] for n in cache_names("cross", layers)]
    cache = [feeds[n] for n in cache_names("cache", layers)]
    out = graphs.step(feeds["tokens"], feeds["positions"], feeds["eos_allowed"], cross[:layers], cross[layers:],
                      feeds["source_mask"], cache[:layers], cache[layers:], candidates=len(feeds["candidates"]),
                      query=(feeds["query_grid"], feeds["query_slots"]))
    return out.top_ids


def _same_best(step: BoundStep, graphs: OnnxGraphs, feeds: dict[str, np.ndarray], when: str) -> None:
    expected = reference_top_ids(graphs, feeds)[:, 0]
    got = step.top_ids()[:, 0]
    if not np.array_equal(got, expected):
        raise AssertionError(f"{when}: {int((got != expected).sum())} of {len(expected)} rows' best tokens differ "
                             "from the runtime's step")


def check(step: BoundStep, graphs: OnnxGraphs, feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """The bound step answers as the runtime's step does: as bound, after an in-place change of
    its tokens, and after three tokens of a decode loop (the append writing each position's
    keys and values into the cache in place, the positions moving on); raises AssertionError
    where it does not. Every graph runs at least three times, as a CUDA graph is captured
    within the first runs."""
    for _ in range(3):
        step.run()
    _same_best(step, graphs, feeds, "as bound")
    feeds["tokens"] = rng.integers(4, graphs.config.vocab_size, feeds["tokens"].shape)
    step.update("tokens", feeds["tokens"])
    for _ in range(3):
        step.run()
    _same_best(step, graphs, feeds, "after the tokens changed in place")
    layers, rows = graphs.config.decoder_layers, np.arange(len(feeds["tokens"]))
    for _ in range(3):
        step.token(feeds["tokens"], feeds["positions"])
        for cache, new in zip(cache_names("cache", layers), cache_names("new", layers)):
            written = step.inputs[cache].numpy()[rows, :, feeds["positions"]]
            if not np.array_equal(written, step.outputs[new].numpy()[:, :, 0]):
                raise AssertionError(f"the append did not write {new} into {cache} at each row's position")
            feeds[cache] = np.array(step.inputs[cache].numpy())
        feeds["tokens"], feeds["positions"] = step.top_ids()[:, :1], feeds["positions"] + 1
    step.update("tokens", feeds["tokens"])
    step.update("positions", feeds["positions"])
    step.run()
    _same_best(step, graphs, feeds, "after three tokens of a decode loop")


def seconds_per_step(run: Callable[[], None], seconds: float = 0.6) -> float:
    """Best of three timings of as many runs as fit in about `seconds`, after warm-up runs."""
    for _ in range(3):
        run()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds / 4:
        run()
        calls += 1
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def measure(graphs: OnnxGraphs, rows: int, beams: int, capacity: int, source_length: int, *,
            cuda_graph: bool) -> dict:
    """One bucket in one setting: checked, then timed (the step alone, and a decode loop's token:
    inputs in, step, append, best tokens out); or the reason it could not run."""
    rng = np.random.default_rng(rows * 10 + beams)
    feeds = bucket_inputs(graphs, rows, beams, capacity, source_length, rng)
    figure = {"rows": rows, "beams": beams, "capacity": capacity, "source_length": source_length,
              "setting": "cuda graph" if cuda_graph else "bound"}
    try:
        step = BoundStep(graphs, feeds, cuda_graph=cuda_graph)
        check(step, graphs, feeds, rng)
    except (AssertionError, RuntimeError, ValueError, *_ORT_ERRORS) as e:
        return {**figure, "error": f"{type(e).__name__}: {str(e)[:400]}"}
    tokens, start = feeds["tokens"], capacity // 2
    turns = iter(range(1 << 62))

    def token() -> None:  # positions cycle through the cache's second half, as a long decode would
        step.token(tokens, np.full(rows, start + next(turns) % (capacity - start), np.int64))

    step_seconds, token_seconds = seconds_per_step(step.run), seconds_per_step(token)
    return {**figure, "ms_per_step": step_seconds * 1e3, "ms_per_token": token_seconds * 1e3,
            "tokens_per_s": rows / token_seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model version directory (default: the newest en-es version)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--beams", type=int, nargs="+", default=[1])
    # More than 100 columns: ONNX Runtime may move a node whose inputs are all graph inputs or
    # initializers of at most 100 values to the CPU, and a capture fails on the copy that needs.
    parser.add_argument("--capacity", type=int, default=128, help="cache columns (each row uses half)")
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--output", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)

    model = args.model or ROOT / "models" / "en-es" / str(versions(ROOT / "models" / "en-es")[-1])
    graphs = OnnxGraphs(model, SessionConfig(device=args.device, streams=1))
    settings = [False, True] if graphs.provider == CUDA else [False]
    figures = []
    print(f"{model}, {graphs.provider}, {np.dtype(graphs.dtype).name}, capacity {args.capacity}, "
          f"source length {args.source_length}")
    print("| rows | beams | setting | ms a step | ms a token (loop) | tokens/s |\n|---|---|---|---|---|---|")
    for rows in args.rows:
        for beams in args.beams:
            if rows % beams:
                continue
            for cuda_graph in settings:
                f = measure(graphs, rows, beams, args.capacity, args.source_length, cuda_graph=cuda_graph)
                figures.append(f)
                cells = [f"{f['ms_per_step']:.3f}", f"{f['ms_per_token']:.3f}", f"{f['tokens_per_s']:,.0f}"] \
                    if "error" not in f else [f"not run: {f['error']}", "", ""]
                print(f"| {rows} | {beams} | {f['setting']} | " + " | ".join(cells) + " |", flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"model": str(model), "provider": graphs.provider,
                                           "dtype": np.dtype(graphs.dtype).name, "figures": figures}, indent=2) + "\n")
    return 1 if any("error" in f for f in figures) else 0  # a capture that fails is a finding, and a failure


if __name__ == "__main__":
    sys.exit(main())
