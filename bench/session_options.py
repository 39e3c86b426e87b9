"""ONNX Runtime session options, measured: which settings decode the workload fastest?

    .venv/bin/python bench/session_options.py --arch small --precision fp32

Times the project's decode loop on the fixed workload (bench/decode_speed.py prepares the
models) under each setting of one option at a time, from the defaults in
server/runtime/sessions.py: thread spinning, graph optimization level, intra-op threads. All in one
process and one run, so the figures compare as ratios. Results: a table, and JSON in
bench/results/session_options.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from bench.decode_speed import ROOT, WORKLOAD, load_workload, machine, measure_mode, prepare_arch, workload_sources
from model.search import DecodeOptions
from server.runtime import OnnxGraphs, SessionConfig, translate_ids

DEFAULT = SessionConfig(device="cpu", streams=1, intra_op_threads=2)
VARIANTS = {
    "default (step spinning, optimization all, 1 stream x 2 threads)": DEFAULT,
    "spinning off": replace(DEFAULT, spinning=False),
    "optimization basic": replace(DEFAULT, optimization="basic"),
    "optimization extended": replace(DEFAULT, optimization="extended"),
    "1 intra-op thread": replace(DEFAULT, intra_op_threads=1),
    "2 streams x 1 thread": replace(DEFAULT, streams=2, intra_op_threads=1),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="small")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--workload", type=Path, default=WORKLOAD)
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    p.add_argument("--tokenizer-corpus", type=Path, default=ROOT / "data" / "en-es" / "train.tsv")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "session_options.json")
    args = p.parse_args()
    workload = load_workload(args.workload)
    version = prepare_arch(workload, args.arch, args.cache, args.tokenizer_corpus) / "models" / args.precision / "1"
    sources = workload_sources(workload, eos_id=3)
    results = {}
    for name, config in VARIANTS.items():
        graphs = OnnxGraphs(version, config)

        def decode(batch: list[list[int]], beam: int, length: int) -> None:
            translate_ids(graphs, batch, DecodeOptions(beam_size=beam, min_length=length, max_length=length),
                          max_batch=len(batch))

        results[name] = {mode["name"]: measure_mode(decode, sources, mode, workload) for mode in workload["modes"]}
        print(f"{name:52s} " + "  ".join(f"{m}: {f['tokens_per_s']:6.0f} tok/s" for m, f in results[name].items()),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arch": args.arch, "precision": args.precision, "machine": machine(),
                                    "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
